"""Every config field, once: its default, meaning, check, and what a resume may do with it.

    python -m configs.schema            # the table as Markdown (docs/config.md is this output)

`FIELDS` is the one place a field is declared. From it come
- the defaults: `defaults(job, variant)`, the locked-to-be ConfigDict that configs/common.py
  fills with the paper's recipe (configs/recipes.py);
- the validation: `validate(config)`, before anything heavy is imported: a bad value is one
  message naming the field; the listing `--help` points to (python -m configs.schema);
- the workdir's resume rules (trainer/workdir.py): `resume_rule(field)` says whether a changed
  field is refused (it changes what is computed), free (it changes how or how often: cadence,
  layout over devices, where data is read from), or an extension (the run's length).

A field's default may depend on the model size (scan, remat and the mesh do; configs/recipes.py
says which sizes), and it carries its type: every float field is created as a float, so
`--config.optim.base_lr=1` is accepted.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import ml_collections

from configs import recipes
from configs.checks import (
  Check,
  between,
  channel_stats,
  channel_std,
  grad_accum,
  image_size,
  mask_ratio,
  max_delay,
  non_negative,
  one_of,
  positive,
  profile_steps,
  retry_delay,
  total_steps,
)
from core.errors import UserError

JOBS = ("pretrain", "finetune")
BOTH = JOBS
PRETRAIN = ("pretrain",)
FINETUNE = ("finetune",)

# What a resume may do with a changed field.
REFUSE = "refuse"  # changes what is computed: refused unless --allow_config_change
FREE = "free"  # changes how or how often, not what: allowed and said
EXTEND = "extend"  # the run's length: allowed, and the schedule follows the new length

# The models' names and stride, repeated so that a config is checked before the models (and flax)
# are imported; tests/configs/test_configs.py holds them equal to the models' own.
DTYPES = ("float32", "bfloat16", "float16")
DEPTHWISE_IMPLS = ("", "shift", "xla")  # models/layers.py's, and '' = per platform
FCMAE_IMPLS = ("dense", "sparse")  # fcmae/model.py's
LAYER_DECAY_SCHEMES = ("single", "group")  # trainer/optim.py's


class ConfigError(UserError, ValueError):
  """A config argument or field that cannot be run: the message names the field and the value."""


@dataclasses.dataclass(frozen=True)
class Field:
  name: str  # dotted: "optim.base_lr"
  default: Any  # a value, or a function of the model size
  meaning: str
  resume: str = REFUSE
  check: Check | None = None
  jobs: tuple[str, ...] = BOTH

  def default_for(self, variant: str) -> Any:
    return self.default(variant) if callable(self.default) else self.default


def _fsdp_default(variant):
  return -1 if variant in recipes.FSDP_SIZES else 1


# --- the table ------------------------------------------------------------------------------

F = Field
FIELDS: tuple[Field, ...] = (
  # The model.
  F("model.variant", lambda v: v, "ConvNeXt V2 size", check=one_of(*recipes.SIZES)),
  F(
    "model.dtype",
    "bfloat16",
    "compute dtype; params and GRN / LayerNorm statistics stay float32",
    check=one_of(*DTYPES),
  ),
  F(
    "model.depthwise_impl",
    "",
    "7x7 depthwise conv: 'xla', 'shift' (faster on CPU), '' = per platform",
    FREE,
    one_of(*DEPTHWISE_IMPLS),
  ),
  F(
    "model.scan",
    lambda v: v in recipes.SCAN_SIZES,
    "lax.scan over a stage's identical blocks (less to compile; same checkpoint layout)",
    FREE,
  ),
  F(
    "model.remat",
    lambda v: v in recipes.REMAT_SIZES,
    "recompute each block in the backward pass (less memory, a third more compute)",
    FREE,
  ),
  F(
    "model.drop_path_rate",
    0.0,
    "stochastic depth, rising linearly to this in the last block",
    check=between(0, 1, hi_open=True, what="a rate"),
  ),
  F(
    "model.in_chans",
    3,
    "input channels: 3 RGB, 1 greyscale, any C >= 1 from .npy images; 3-channel weights are "
    "adapted to C (timm's adapt_input_conv)",
    check=positive,
  ),
  F(
    "model.head_init_scale",
    recipes.FINETUNE_SHARED["head_init_scale"],
    "scale of the classifier head's initial weights",
    jobs=FINETUNE,
  ),
  # The data.
  F(
    "data.name",
    "imagenet2012",
    "a TFDS name, 'folder:/path' (train/<class>/*, val/<class>/*, or any images at any depth, "
    "unlabeled; gs:// works) or 'demo'",
  ),
  F("data.data_dir", "", "TFDS data_dir (gs:// works); '' = TFDS's default", FREE),
  F(
    "data.mean",
    "",
    "per-channel mean of the pixels in [0, 1], 'A,B,C'; '' = ImageNet's for 3 channels, else "
    "computed from the data (data.stats_images) and kept in the workdir",
    check=channel_stats,
  ),
  F("data.std", "", "per-channel standard deviation, as data.mean", check=channel_std),
  F(
    "data.stats_images",
    256,
    "the first images of the file list data.mean / data.std are computed over when ''",
    FREE,
    positive,
  ),
  F("data.image_size", 224, "training and evaluation resolution", check=image_size),
  F(
    "data.crop_scale_min",
    0.2,
    "RandomResizedCrop's smallest area fraction",
    check=between(0, 1, lo_open=True, what="a fraction"),
  ),
  F(
    "data.crop_pct",
    recipes.FINETUNE_SHARED["crop_pct"],
    "evaluation: center crop of the image resized to size / crop_pct",
    check=between(0, 1, lo_open=True, what="a fraction"),
    jobs=FINETUNE,
  ),
  F(
    "data.num_classes",
    0,
    "classes of the head; 0 = the dataset's",
    check=non_negative,
    jobs=FINETUNE,
  ),
  # The run.
  F(
    "batch_size",
    recipes.PRETRAIN["batch_size"],
    "global batch over all processes; the lr scales with it",
    check=positive,
  ),
  F(
    "grad_accum_steps",
    1,
    "micro-batches per step (the reference's update_freq); the same update",
    FREE,
    grad_accum,
  ),
  F("num_epochs", 0, "epochs of training", EXTEND, non_negative),
  F("total_steps", 0, "steps of training; > 0 overrides num_epochs", EXTEND, total_steps),
  F("warmup_epochs", 0.0, "linear warmup of the lr, in epochs", check=non_negative),
  F("warmup_steps", 0, "linear warmup in steps; > 0 overrides warmup_epochs", check=non_negative),
  F("seed", 0, "the seed of the init, the data order and every random draw"),
  F(
    "log_every_steps",
    100,
    "a metrics row (metrics.jsonl, TensorBoard, the progress line)",
    FREE,
    positive,
  ),
  F("checkpoint_every_steps", 1000, "a checkpoint (and on SIGTERM / Ctrl-C)", FREE, positive),
  F("keep_checkpoints", 3, "the newest checkpoints kept", FREE, positive),
  F(
    "eval_every_steps",
    1000,
    "evaluation (finetuning) or pictures and monitors (pretraining); 0 = at the end only",
    FREE,
    non_negative,
  ),
  F(
    "compilation_cache",
    "auto",
    "compiled programs kept between runs: 'auto' = "
    "$JAX_COMPILATION_CACHE_DIR or WORKDIR/compilation_cache, 'off', or a directory",
    FREE,
  ),
  F(
    "profile_steps",
    "",
    "'START:END': a jax.profiler trace of those steps into WORKDIR/profile",
    FREE,
    profile_steps,
  ),
  F("storage.retries", 32, "attempts at a checkpoint's GCS request (docs/gcs.md)", FREE, positive),
  F("storage.retry_delay", 1.0, "seconds before its first retry, doubling", FREE, retry_delay),
  F("storage.retry_max_delay", 32.0, "the longest wait between two retries", FREE, max_delay),
  F(
    "log.wandb",
    "",
    "a Weights & Biases project to log to (process 0; needs wandb installed); '' = none",
    FREE,
  ),
  F("log.wandb_entity", "", "the W&B entity (team or user); '' = the account's default", FREE),
  F("log.wandb_name", "", "the W&B run's name; '' = one W&B chooses", FREE),
  # Devices.
  F(
    "mesh.data",
    lambda v: 1 if v in recipes.FSDP_SIZES else -1,
    "devices along the data axis; -1 = the rest",
    FREE,
  ),
  F(
    "mesh.fsdp", _fsdp_default, "devices the state is sharded over (FSDP); -1 = all the rest", FREE
  ),
  F("sharding.min_size", 2**18, "arrays with fewer elements stay replicated", FREE, positive),
  # The optimizer (trainer/optim.py): lr = base_lr * batch_size / 256.
  F("optim.base_lr", 0.0, "learning rate per 256 images", check=non_negative),
  F("optim.min_lr", 0.0, "the cosine schedule's floor", check=non_negative),
  F("optim.b1", 0.9, "AdamW beta1", check=between(0, 1, hi_open=True, what="a beta")),
  F("optim.b2", 0.999, "AdamW beta2", check=between(0, 1, hi_open=True, what="a beta")),
  F("optim.eps", 1e-8, "AdamW epsilon", check=non_negative),
  F(
    "optim.weight_decay",
    0.0,
    "decoupled weight decay (not on biases and norms)",
    check=non_negative,
  ),
  F("optim.grad_clip", 0.0, "global gradient norm clip; 0 = none", check=non_negative),
  F(
    "optim.layer_decay",
    1.0,
    "layer-wise lr decay; 1 = none",
    check=between(0, 1, lo_open=True, what="a factor"),
  ),
  F(
    "optim.layer_decay_scheme",
    "single",
    "'single' (per block) or 'group' (the reference's groups of 3 blocks in stage 3)",
    check=one_of(*LAYER_DECAY_SCHEMES),
  ),
  F(
    "optim.ema_decay",
    0.0,
    "EMA of the params, evaluated beside them; 0 = none",
    check=between(0, 1, hi_open=True, what="a decay"),
  ),
  # FCMAE pretraining.
  F(
    "fcmae.mask_ratio",
    recipes.PRETRAIN["mask_ratio"],
    "fraction of the 32x32 patches masked",
    check=mask_ratio,
    jobs=PRETRAIN,
  ),
  F(
    "fcmae.decoder_dim",
    recipes.PRETRAIN["decoder_dim"],
    "the decoder's width",
    check=positive,
    jobs=PRETRAIN,
  ),
  F(
    "fcmae.decoder_depth",
    recipes.PRETRAIN["decoder_depth"],
    "the decoder's ConvNeXt V2 blocks",
    check=positive,
    jobs=PRETRAIN,
  ),
  F(
    "fcmae.norm_pix_loss",
    recipes.PRETRAIN["norm_pix_loss"],
    "the loss on per-patch normalized pixels",
    jobs=PRETRAIN,
  ),
  F(
    "fcmae.impl",
    "sparse",
    "'sparse' (the visible patches only) or 'dense' (the paper's emulation)",
    check=one_of(*FCMAE_IMPLS),
    jobs=PRETRAIN,
  ),
  F(
    "probe.enabled",
    True,
    "kNN and linear-probe monitors of the encoder during pretraining",
    FREE,
    jobs=PRETRAIN,
  ),
  F(
    "probe.train_examples",
    10_000,
    "the monitors' memory bank: a random subset of the training split",
    FREE,
    positive,
    PRETRAIN,
  ),
  F("probe.k", 20, "kNN neighbours (weighted, as DINO)", FREE, positive, PRETRAIN),
  F(
    "probe.temperature",
    0.07,
    "kNN weighting temperature",
    FREE,
    between(0, 1e9, lo_open=True, what="a temperature"),
    PRETRAIN,
  ),
  F("probe.batch_size", 0, "batch for embedding; 0 = batch_size", FREE, non_negative, PRETRAIN),
  F(
    "probe.data",
    "",
    "the labeled data the monitors evaluate on (a TFDS name, folder: with class folders); "
    "'' = data.name, and none when it has no labels",
    FREE,
    jobs=PRETRAIN,
  ),
  # Finetuning.
  F(
    "init_from",
    "",
    "weights to start from: a workdir, a converted checkpoint, a PyTorch file, hf:REPO[@REV]; "
    "pretraining loads the FCMAE decoder too when the source has one; '' = scratch",
    FREE,
  ),
  F(
    "eval_only",
    False,
    "evaluate the latest checkpoint (else init_from) and stop",
    FREE,
    jobs=FINETUNE,
  ),
  F(
    "aug.randaugment",
    recipes.FINETUNE_SHARED["randaugment"],
    "timm RandAugment spec; '' = none",
    jobs=FINETUNE,
  ),
  F(
    "aug.reprob",
    recipes.FINETUNE_SHARED["reprob"],
    "random erasing probability",
    check=between(0, 1, what="a probability"),
    jobs=FINETUNE,
  ),
  F("aug.mixup", 0.8, "mixup alpha; 0 = none", check=non_negative, jobs=FINETUNE),
  F("aug.cutmix", 1.0, "cutmix alpha; 0 = none", check=non_negative, jobs=FINETUNE),
  F(
    "aug.mixup_switch_prob",
    recipes.FINETUNE_SHARED["mixup_switch_prob"],
    "probability of cutmix when both are on",
    check=between(0, 1, what="a probability"),
    jobs=FINETUNE,
  ),
  F(
    "aug.label_smoothing",
    0.1,
    "label smoothing of the targets",
    check=between(0, 1, hi_open=True, what="a fraction"),
    jobs=FINETUNE,
  ),
)
del F


BY_NAME = {f.name: f for f in FIELDS}
LISTING = "python -m configs.schema (docs/config.md)"


def fields(job: str) -> tuple[Field, ...]:
  return tuple(f for f in FIELDS if job in f.jobs)


def defaults(job: str, variant: str) -> ml_collections.ConfigDict:
  """The fields of `job` ('pretrain' or 'finetune') with their defaults for `variant`, unlocked."""
  if job not in JOBS:
    raise ValueError(f"Unknown job {job!r}; expected one of {JOBS}.")
  if variant not in recipes.SIZES:
    raise ConfigError(f"Unknown variant {variant!r}; valid: {', '.join(recipes.SIZES)}.")
  config = ml_collections.ConfigDict()
  for f in fields(job):
    *parents, leaf = f.name.split(".")
    node = config
    for parent in parents:
      if parent not in node:
        node[parent] = ml_collections.ConfigDict()
      node = node[parent]
    node[leaf] = f.default_for(variant)
  return config


def job_of(config) -> str:
  return "pretrain" if "fcmae" in config else "finetune"


def value(config, name: str) -> Any:
  node = config
  for part in name.split("."):
    node = node[part]
  return node


def validate(config) -> None:
  """Checks every field of the config before anything is built, so that a bad value is one
  message naming the field, not an error deep inside the model or the input pipeline."""
  for f in fields(job_of(config)):
    if f.check is None:
      continue
    v = value(config, f.name)
    expected = f.check(v, config)
    if expected:
      raise ConfigError(
        f"--config.{f.name}={v!r}: {expected}. The config fields are listed by {LISTING}."
      )


def check_field(config, name: str) -> None:
  """Field `name`'s check alone (configs/common.py checks a config file's argument with it)."""
  f = BY_NAME[name]
  expected = f.check(value(config, name), config) if f.check else None
  if expected:
    raise ConfigError(f"{name}={value(config, name)!r}: {expected}.")


def resume_rule(name: str) -> str:
  """What a resume may do when field `name` changes: REFUSE, FREE or EXTEND. A field the table
  does not have (one a workdir's config.json has from another version) is refused."""
  f = BY_NAME.get(name)
  return f.resume if f else REFUSE


def markdown() -> str:
  """The table as Markdown: the listing `--help` points to (docs/config.md)."""

  def shown(f: Field) -> str:
    if f.name == "model.variant":
      return "the size"
    if callable(f.default):
      by_value = {}
      for size in recipes.SIZES:
        by_value.setdefault(f.default(size), []).append(size)
      common, *others = sorted(by_value, key=lambda v: -len(by_value[v]))
      rest = "; ".join(f"`{v!r}` for {', '.join(by_value[v])}" for v in others)
      return f"`{common!r}`" + (f"; {rest}" if rest else "")
    if f.name in recipes.NOTES:  # the config files' value, not this placeholder
      return f"from the recipe: {recipes.NOTES[f.name]}"
    return f"`{f.default!r}`"

  rules = {REFUSE: "refused", FREE: "free", EXTEND: "extends"}
  lines = [
    "# Config fields",
    "",
    "Generated by `python -m configs.schema` from configs/schema.py. Override any field with",
    "`--config.FIELD=VALUE`. 'From the recipe': the config files set the paper's values per",
    "job, size and stage (configs/recipes.py). On resume a changed field is refused (it changes",
    "what is computed; `--allow_config_change` allows it), free, or extends the run.",
    "",
    "| field | default | jobs | on resume | meaning |",
    "|---|---|---|---|---|",
  ]
  for f in FIELDS:
    jobs = "both" if f.jobs == BOTH else f.jobs[0]
    lines.append(f"| `{f.name}` | {shown(f)} | {jobs} | {rules[f.resume]} | {f.meaning} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  sys.stdout.write(markdown())
