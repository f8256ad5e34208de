"""ImageNet finetuning and evaluation: the task the shared loop runs for finetune.py.

Training: RandomResizedCrop + flip + RandAugment in the input pipeline; random erasing and mixup /
cutmix with label smoothing on the device (data/on_device.py, data/mixup.py; with
grad_accum_steps > 1, images mix within their micro-batch), soft-target cross-entropy, drop path,
AdamW with layer-wise lr decay and an EMA of the params (trainer/optim.py). The params start
from config.init_from (classify/pretrained.py); evaluation is classify/evaluate.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from classify import metrics, pretrained
from classify.evaluate import Evaluator
from core import logs
from core import task as task_lib
from data import config_input, mixup, normalization, on_device
from data.info import DatasetError, DatasetInfo
from models import convnextv2, layers
from models import pretrained as weights


def num_classes(config, info: DatasetInfo) -> int:
  """config.data.num_classes, or (when 0) the dataset's own count."""
  return int(config.data.num_classes) if config.data.num_classes > 0 else info.num_classes


def build_model(config, classes: int, abstract: bool = False):
  """(apply_fn, params) of the config's classifier."""
  return convnextv2.build(
    config.model.variant,
    classes,
    config.seed,
    abstract=abstract,
    **convnextv2.config_options(config.model),
  )


def make_task(config, workdir: str | None, info: DatasetInfo | None = None) -> task_lib.Task:
  """The finetuning task of `config`. `info`: the dataset's sizes and classes, when they are
  known without reading it (--compile_only)."""
  del workdir  # the finetuning task writes nothing of its own
  stats = normalization.given(config)
  if stats is None and info is not None:  # --compile_only reads no data
    stats = normalization.placeholder(config.model.in_chans)
  if info is None:  # the input pipeline (TensorFlow) only where data is read
    from data import sources

    info = sources.dataset_info(config.data.name, config.data.data_dir or None)
  classes = num_classes(config, info)
  if stats is None:
    raise DatasetError(
      f"model.in_chans={config.model.in_chans}: finetuning needs the pretraining's normalisation: "
      "pass --config.data.mean=... --config.data.std=... (the pretraining workdir's "
      f"{normalization.STATS_NAME} holds them)"
    )
  apply_fn, _ = build_model(config, classes, abstract=True)
  local_batch = config.batch_size // jax.process_count()
  aug = config.aug

  def task_loss(params, batch, rng):
    keys = batch["key"]  # per example: random erasing and drop path; rng: the batch's mixing
    images = on_device.normalize(batch["image"], stats.mean, stats.std)
    images = on_device.random_erasing(layers.fold_in(keys, 0), images, aug.reprob)
    images, targets = mixup.mix_batch(
      rng,
      images,
      batch["label"],
      num_classes=classes,
      mixup_alpha=aug.mixup,
      cutmix_alpha=aug.cutmix,
      switch_prob=aug.mixup_switch_prob,
      label_smoothing=aug.label_smoothing,
    )
    drop_keys = layers.fold_in(keys, 1) if config.model.drop_path_rate > 0 else None
    logits = apply_fn(params, images, rng=drop_keys)
    return jnp.mean(metrics.soft_cross_entropy(logits.astype(jnp.float32), targets)), {}

  def load_pretrained(fresh):
    if not config.init_from:
      logs.say("Training from scratch (no init_from).")
      return fresh
    source = weights.read_params(config.init_from)
    params, report = pretrained.merge_pretrained(
      jax.device_get(fresh), source, source=config.init_from
    )
    logs.say(pretrained.describe(config.init_from, report))
    return params

  evaluator = Evaluator(config, apply_fn, local_batch, stats)

  return task_lib.Task(
    fresh_params=lambda: build_model(config, classes)[1],
    loss_fn=task_loss,
    train_batches=config_input.train_stream(config, "finetune", randaugment=aug.randaugment),
    steps_per_epoch=config_input.steps_per_epoch(config, info, training=not config.eval_only),
    load_pretrained=load_pretrained,
    evaluate=evaluator,
    skipped_images=config_input.skipped_images,
    compile_eval=evaluator.compile,
    shown=("top1", "top5", "ema_top1"),
  )
