"""ImageNet finetuning and evaluation: the task the shared loop runs for finetune.py.

Training: RandomResizedCrop + flip + RandAugment + random erasing in the input pipeline, then
mixup / cutmix with label smoothing on the global batch, soft-target cross-entropy, drop path,
AdamW with layer-wise lr decay and an EMA of the params (fcmae.optim).

Evaluation: the whole validation split exactly once on any number of processes (the last
partial batch is padded and masked), top-1 and top-5 of the raw params and of the EMA.

init_from (config.init_from): a train.py or finetune.py workdir or checkpoint, a
`models.convert` output directory, or an official / Hugging Face / timm PyTorch checkpoint. Every
parameter whose name and shape fit is loaded; the FCMAE decoder and anything else the classifier
does not have is skipped; what the source lacks (a new head) keeps its fresh, scaled init. The
log lists all three groups. An encoder whose shapes do not fit is an error that names them.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fcmae import checkpoint, data, loop, metrics, mixup, sharding
from models import convert, convnextv2


def num_classes(config, info: data.DatasetInfo) -> int:
  """config.data.num_classes, or (when 0) the dataset's own count."""
  return int(config.data.num_classes) if config.data.num_classes > 0 else info.num_classes


def build_model(config, classes: int, abstract: bool = False):
  """(apply_fn, params) of the config's classifier."""
  return convnextv2.build(
      config.model.variant, classes, config.seed, abstract=abstract, dtype=config.model.dtype,
      depthwise_impl=config.model.depthwise_impl or None, scan=config.model.scan,
      remat=config.model.remat, drop_path_rate=config.model.drop_path_rate,
      head_init_scale=config.model.head_init_scale)


# ----------------------------------------------------------------------------------------------
# Initialisation from a pretrained model.


def read_pretrained(path: str) -> dict:
  """Params (host numpy) of any supported source: a run's workdir/checkpoint (ours), a converted
  checkpoint, or a PyTorch checkpoint file/directory."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"init_from={path!r} does not exist.")
  if convert.is_converted_checkpoint(path):
    params, _ = convert.load_params(path)
  elif _is_train_checkpoint(path):
    params = checkpoint.restore_params(path)
  else:
    params, _ = convert.to_params(convert.read_state_dict(path))
  return params


def _is_train_checkpoint(path: str) -> bool:
  return any(os.path.isdir(os.path.join(path, sub)) for sub in ("checkpoints", "state")) or (
      os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path)))


def merge_pretrained(fresh: dict, pretrained: dict, *, source: str = "") -> tuple[dict, dict]:
  """Fresh params with every leaf the pretrained tree has (same name and shape) replaced.

  FCMAE params contribute their encoder; the decoder is reported as skipped. Returns (params,
  report) with report lists `loaded`, `skipped` (in the source only) and `initialized` (kept
  fresh). A shape mismatch outside the head is an error."""
  fresh_flat = traverse_util.flatten_dict(fresh, sep="/")
  source_flat = traverse_util.flatten_dict(pretrained, sep="/")
  if "encoder" in pretrained:  # FCMAE params: the encoder is the classifier's body
    source_flat = {(k[len("encoder/"):] if k.startswith("encoder/") else k): v
                   for k, v in source_flat.items()}
  loaded, initialized, mismatched = [], [], []
  merged = {}
  for name, leaf in fresh_flat.items():
    if name in source_flat and tuple(np.shape(source_flat[name])) == tuple(leaf.shape):
      merged[name] = np.asarray(source_flat[name], np.float32)
      loaded.append(name)
    else:
      if name in source_flat:
        mismatched.append(f"{name}: checkpoint {tuple(np.shape(source_flat[name]))}, "
                          f"model {tuple(leaf.shape)}")
      merged[name] = leaf
      initialized.append(name)
  bad = [m for m in mismatched if not m.startswith("head/")]
  if bad:
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    raise ValueError(f"init_from {source}: shapes do not fit the model "
                     f"({len(bad)} tensors; is it the same variant?):\n  " + "\n  ".join(bad[:20])
                     + more)
  skipped = sorted(set(source_flat) - set(fresh_flat))
  report = {"loaded": loaded, "skipped": skipped, "initialized": initialized}
  return traverse_util.unflatten_dict(merged, sep="/"), report


def _summarize(names: list[str]) -> str:
  """Groups parameter names by module for a readable log line."""
  groups = sorted({name.rsplit("/", 1)[0] for name in names})
  return ", ".join(groups) if groups else "nothing"


# ----------------------------------------------------------------------------------------------
# The task.


def make_task(config, workdir: str) -> loop.Task:
  info = data.dataset_info(config.data.name, config.data.data_dir or None)
  classes = num_classes(config, info)
  apply_fn, _ = build_model(config, classes, abstract=True)
  local_batch = config.batch_size // jax.process_count()
  aug = config.aug

  def task_loss(params, batch, rng):
    mix_rng, drop_rng = jax.random.split(rng)
    images, targets = mixup.mix_batch(
        mix_rng, batch["image"], batch["label"], num_classes=classes, mixup_alpha=aug.mixup,
        cutmix_alpha=aug.cutmix, switch_prob=aug.mixup_switch_prob,
        label_smoothing=aug.label_smoothing)
    logits = apply_fn(params, images, rng=drop_rng if config.model.drop_path_rate > 0 else None)
    return jnp.mean(mixup.soft_cross_entropy(logits.astype(jnp.float32), targets)), {}


  def initial_params(fresh):
    if not config.init_from:
      metrics.say("Training from scratch (no init_from).")
      return fresh
    pretrained = read_pretrained(config.init_from)
    params, report = merge_pretrained(jax.device_get(fresh), pretrained, source=config.init_from)
    metrics.say(f"init_from {config.init_from}: loaded {len(report['loaded'])} tensors; "
                f"skipped {len(report['skipped'])} ({_summarize(report['skipped'])}); freshly "
                f"initialized {len(report['initialized'])} ({_summarize(report['initialized'])}).")
    return params

  evaluator = Evaluator(config, apply_fn, local_batch)

  return loop.Task(
      init_params=lambda: build_model(config, classes)[1],
      loss_fn=task_loss,
      train_batches=loop.train_stream(config, "finetune", randaugment=aug.randaugment,
                                      reprob=aug.reprob),
      steps_per_epoch=loop.steps_per_epoch(config, info, training=not config.eval_only),
      initial_params=initial_params,
      evaluate=evaluator,
      skipped_images=data.skipped_images,
  )


class Evaluator:
  """Top-1 / top-5 over the whole validation split, for the params and (if kept) their EMA."""

  def __init__(self, config, apply_fn, local_batch: int):
    self.config = config
    self.local_batch = local_batch

    def counts(params, batch):
      logits = apply_fn(params, batch["image"])
      weight = batch["mask"]
      return {"top1": jnp.sum(mixup.topk_correct(logits, batch["label"], 1) * weight),
              "top5": jnp.sum(mixup.topk_correct(logits, batch["label"], 5) * weight),
              "num_examples": jnp.sum(weight)}

    self._counts = jax.jit(counts)

  def __call__(self, state, step) -> dict:
    config = self.config
    batch_sharding = sharding.batch_sharding(_mesh_of(state))
    totals: dict[str, float] = {}
    variants = [("", state["params"])]
    if "ema_params" in state:
      variants.append(("ema_", state["ema_params"]))
    batches = data.eval_iterator(
        config.data.name, data_dir=config.data.data_dir or None,
        image_size=config.data.image_size, local_batch_size=self.local_batch,
        process_index=jax.process_index(), process_count=jax.process_count(),
        crop_pct=config.data.crop_pct)
    for local in batches:
      batch = sharding.make_global_batch(local, batch_sharding)
      for prefix, params in variants:
        for key, value in self._counts(params, batch).items():
          totals[prefix + key] = totals.get(prefix + key, 0.0) + float(value)
    result = {"num_examples": int(totals["num_examples"])}
    for prefix, _ in variants:
      n = max(totals[prefix + "num_examples"], 1.0)
      result[prefix + "top1"] = 100.0 * totals[prefix + "top1"] / n
      result[prefix + "top5"] = 100.0 * totals[prefix + "top5"] / n
    return result


def _mesh_of(state):
  return jax.tree.leaves(state["params"])[0].sharding.mesh


def evaluate_only(config, workdir: str, devices=None) -> dict:
  """Evaluates the workdir's latest checkpoint, else config.init_from, and logs one eval row."""
  task = make_task(config, workdir)
  return loop.evaluate_only(config, workdir, task, devices=devices)
