"""Builds the locked run configs from the recipe tables (configs/recipes.py).

Every config file is a thin `get_config(arg=None)` that calls `pretrain_from_arg` or
`finetune_from_arg`; the field schema lives here, once:

    config.model.{variant, dtype, depthwise_impl, scan, remat, drop_path_rate[, head_init_scale]}
    config.data.{name, data_dir, image_size, crop_scale_min[, crop_pct, num_classes]}
    config.{batch_size, grad_accum_steps, num_epochs, total_steps, warmup_epochs, warmup_steps, seed}
    config.{log_every_steps, checkpoint_every_steps, keep_checkpoints, eval_every_steps}
    config.{compilation_cache, profile_steps}
    config.mesh.{data, fsdp}, config.sharding.min_size
    config.optim.{base_lr, min_lr, b1, b2, eps, weight_decay, grad_clip, layer_decay,
                  layer_decay_scheme, ema_decay}
    pretraining: config.fcmae.{mask_ratio, decoder_dim, decoder_depth, norm_pix_loss, impl},
                 config.probe.{enabled, train_examples, k, temperature, batch_size}
    finetuning:  config.{init_from, eval_only},
                 config.aug.{randaugment, reprob, mixup, cutmix, mixup_switch_prob, label_smoothing}

The learning rate is lr = optim.base_lr * batch_size / 256 (fcmae/optim.py), so overriding
`--config.batch_size` rescales it the way the paper does. Every float field is created as a float,
so `--config.optim.base_lr=1` and `--config.warmup_epochs=5` are accepted; configs are locked, so
a mistyped field name is an error.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from configs import recipes
from trainer.errors import UserError

STAGES = tuple(recipes.FINETUNE_STAGES)
DTYPES = ("float32", "bfloat16", "float16")
# The models' names and stride, repeated so that a config is checked before the models (and flax)
# are imported; tests/configs/test_configs.py holds them equal to the models' own.
DEPTHWISE_IMPLS = ("", "shift", "xla")  # models/layers.py's, and '' = per platform
FCMAE_IMPLS = ("dense", "sparse")  # fcmae/model.py's
STRIDE = 32  # models/convnextv2.py's TOTAL_STRIDE: image sizes are multiples of it


class ConfigError(UserError, ValueError):
  """A config argument or field that cannot be run: the message names the field and the value."""


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
  """'in22k_to_in1k,384' or 'stage=in22k,resolution=384' -> dict over `defaults`' keys.

  Positional tokens fill the keys in order; `key=value` tokens set a key by name. Values are
  converted to the type of the default. Unknown keys and extra tokens raise ConfigError.
  """
  result = dict(defaults)
  if not arg:
    return result
  keys = list(defaults)
  for position, token in enumerate(t.strip() for t in arg.split(",")):
    if "=" in token:
      key, value = (s.strip() for s in token.split("=", 1))
    elif position < len(keys):
      key, value = keys[position], token
    else:
      raise ConfigError(f"Too many config arguments in {arg!r}; expected at most {keys}.")
    if key not in defaults:
      raise ConfigError(f"Unknown config argument {key!r} in {arg!r}; valid: {keys}.")
    result[key] = _convert(value, defaults[key], key)
  return result


def _convert(value: str, default: Any, key: str) -> Any:
  if isinstance(default, bool):
    if value.lower() not in ("true", "false", "1", "0"):
      raise ConfigError(f"Config argument {key}={value!r} is not a bool.")
    return value.lower() in ("true", "1")
  try:
    return type(default)(value)
  except ValueError:
    raise ConfigError(
      f"Config argument {key}={value!r} is not a {type(default).__name__}."
    ) from None


def _base(variant: str, *, image_size: int, batch_size: int) -> ml_collections.ConfigDict:
  """The fields every run shares, with run-cadence defaults for full-size runs (ours)."""
  if variant not in recipes.SIZES:
    raise ConfigError(f"Unknown variant {variant!r}; valid: {', '.join(recipes.SIZES)}.")
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(
    dict(
      variant=variant,
      dtype="bfloat16",  # compute dtype; params, GRN/LayerNorm statistics stay float32
      depthwise_impl="",  # '' = per-backend default; 'shift' or 'xla'
      scan=variant in recipes.SCAN_SIZES,
      remat=variant in recipes.REMAT_SIZES,
      drop_path_rate=0.0,
    )
  )
  c.data = ml_collections.ConfigDict(
    dict(name="imagenet2012", data_dir="", image_size=int(image_size), crop_scale_min=0.2)
  )
  c.batch_size = int(batch_size)  # global
  c.grad_accum_steps = 1  # micro-batches per step (the reference's update_freq)
  c.num_epochs = 0
  c.total_steps = 0  # > 0 overrides num_epochs
  c.warmup_epochs = 0.0
  c.warmup_steps = 0  # > 0 overrides warmup_epochs
  c.seed = 0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.eval_every_steps = 1000
  c.compilation_cache = "auto"  # 'auto': $JAX_COMPILATION_CACHE_DIR or WORKDIR/compilation_cache;
  # 'off'; or a directory (gs:// works)
  c.profile_steps = ""  # 'START:END': a jax.profiler trace into WORKDIR/profile
  fsdp = variant in recipes.FSDP_SIZES  # -1: all the devices (the other axis takes the rest)
  c.mesh = ml_collections.ConfigDict(dict(data=1 if fsdp else -1, fsdp=-1 if fsdp else 1))
  c.sharding = ml_collections.ConfigDict(dict(min_size=2**18))
  c.optim = ml_collections.ConfigDict(
    dict(
      base_lr=0.0,
      min_lr=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,
      grad_clip=0.0,
      layer_decay=1.0,
      layer_decay_scheme="single",
      ema_decay=0.0,
    )
  )
  return c


def pretrain_config(
  variant: str, epochs: int = recipes.PRETRAIN["epochs"]
) -> ml_collections.ConfigDict:
  """FCMAE pretraining of `variant` with the paper's recipe (Table 8); locked."""
  r = recipes.PRETRAIN
  if epochs not in r["epoch_options"]:
    raise ConfigError(
      f"Pretraining epochs {epochs} is not one of the paper's {r['epoch_options']}; "
      "override --config.num_epochs for anything else."
    )
  c = _base(variant, image_size=r["image_size"], batch_size=r["batch_size"])
  c.num_epochs = int(epochs)
  c.warmup_epochs = float(r["warmup_epochs"])
  c.data.crop_scale_min = float(r["crop_scale_min"])
  c.optim.update(
    dict(
      base_lr=r["base_lr"],
      min_lr=float(r["min_lr"]),
      b1=r["b1"],
      b2=r["b2"],
      eps=r["eps"],
      weight_decay=r["weight_decay"],
    )
  )
  c.fcmae = ml_collections.ConfigDict(
    dict(
      mask_ratio=r["mask_ratio"],
      decoder_dim=r["decoder_dim"],
      decoder_depth=r["decoder_depth"],
      norm_pix_loss=r["norm_pix_loss"],
      impl="sparse",  # 'dense' = the paper's emulation on dense tensors
    )
  )
  # Representation monitors (fcmae/probe.py), at eval_every_steps and before the first step.
  c.probe = ml_collections.ConfigDict(
    dict(
      enabled=True,
      train_examples=10_000,  # the memory bank / probe training set: a random subset
      k=20,
      temperature=0.07,  # weighted kNN (DINO, solo-learn)
      batch_size=0,  # for embedding; 0 = the run's batch_size
    )
  )
  c.lock()
  return c


def finetune_config(
  variant: str, stage: str = "in1k", resolution: int = 224
) -> ml_collections.ConfigDict:
  """Finetuning of `variant` for one of the paper's stages; locked.

  stage: 'in1k' (Tables 9-11, after FCMAE), 'in22k' (Table 12, ImageNet-22K intermediate; set
  --config.data.name=folder:/path/to/imagenet22k), 'in22k_to_in1k' (Table 13; set
  --config.init_from to the in22k run's checkpoint). resolution: 224 or 384 (any multiple of 32).
  """
  if stage not in recipes.FINETUNE_STAGES:
    raise ConfigError(f"Unknown finetuning stage {stage!r}; valid: {', '.join(STAGES)}.")
  table = recipes.FINETUNE_STAGES[stage]
  if variant not in table:
    raise ConfigError(
      f"The paper has no {stage!r} recipe for {variant!r}; sizes with one: {', '.join(table)}."
    )
  if resolution <= 0 or resolution % STRIDE:
    raise ConfigError(
      f"Resolution must be a positive multiple of 32 (e.g. 224, 384); got {resolution}."
    )
  r, shared = table[variant], recipes.FINETUNE_SHARED
  c = _base(variant, image_size=resolution, batch_size=r.batch_size)
  if stage == "in22k":
    c.data.name = "folder:/path/to/imagenet22k"  # no TFDS builder for ImageNet-22K: set yours
  c.num_epochs = int(r.epochs)
  c.warmup_epochs = float(r.warmup_epochs)
  c.eval_every_steps = 2500
  c.model.drop_path_rate = float(r.drop_path)
  c.model.head_init_scale = float(shared["head_init_scale"])
  c.data.crop_scale_min = float(shared["crop_scale_min"])
  c.data.crop_pct = float(shared["crop_pct"])
  c.data.num_classes = 0  # 0 = from the dataset
  c.optim.update(
    dict(
      base_lr=float(r.base_lr),
      min_lr=float(shared["min_lr"]),
      b1=shared["b1"],
      b2=shared["b2"],
      eps=shared["eps"],
      weight_decay=float(r.weight_decay),
      layer_decay=float(r.layer_decay),
      layer_decay_scheme=r.layer_decay_scheme,
      ema_decay=float(r.ema_decay),
    )
  )
  c.aug = ml_collections.ConfigDict(
    dict(
      randaugment=shared["randaugment"],
      reprob=float(shared["reprob"]),
      mixup=float(r.mixup),
      cutmix=float(r.cutmix),
      mixup_switch_prob=float(shared["mixup_switch_prob"]),
      label_smoothing=float(r.label_smoothing),
    )
  )
  c.init_from = ""  # '' = scratch; a pretraining / finetuning checkpoint
  c.eval_only = False
  c.lock()
  return c


def pretrain_from_arg(variant: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config` of configs/fcmae_<size>.py: arg '' (1600 epochs) or '800' / 'epochs=800'."""
  return pretrain_config(variant, **parse_arg(arg, epochs=recipes.PRETRAIN["epochs"]))


def finetune_from_arg(variant: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config` of configs/finetune_<size>.py: arg 'STAGE[,RESOLUTION]', e.g. 'in22k_to_in1k,384'."""
  return finetune_config(variant, **parse_arg(arg, stage="in1k", resolution=224))


def no_arg(arg: str | None, name: str) -> None:
  """For config files that take no argument (the demos): a given one is an error, not ignored."""
  if arg:
    raise ConfigError(f"{name} takes no argument; got {arg!r}.")


def parse_profile_steps(steps: str) -> tuple[int, int]:
  """config.profile_steps 'START:END' -> (START, END), 0 <= START < END."""
  start, sep, stop = steps.partition(":")
  if not (sep and start.isdigit() and stop.isdigit() and int(start) < int(stop)):
    raise ConfigError(
      f"--config.profile_steps={steps!r}: expected START:END with START < END, e.g. 10:15."
    )
  return int(start), int(stop)


def validate(config) -> None:
  """Checks the fields a run reads before anything is built, so that a bad value is one message
  naming the field, not an error deep inside the model or the input pipeline."""

  def fail(field, value, expected):
    raise ConfigError(
      f"--config.{field}={value!r}: {expected}. The config fields are listed in configs/common.py."
    )

  model, data = config.model, config.data
  if model.variant not in recipes.SIZES:
    fail("model.variant", model.variant, f"expected one of {', '.join(recipes.SIZES)}")
  if model.dtype not in DTYPES:
    fail("model.dtype", model.dtype, f"expected one of {', '.join(DTYPES)}")
  if model.depthwise_impl not in DEPTHWISE_IMPLS:
    fail("model.depthwise_impl", model.depthwise_impl, "expected '' (per platform), shift or xla")
  if not 0 <= model.drop_path_rate < 1:
    fail("model.drop_path_rate", model.drop_path_rate, "expected a rate in [0, 1)")
  if data.image_size <= 0 or data.image_size % STRIDE:
    fail(
      "data.image_size",
      data.image_size,
      "expected a positive multiple of 32 (the encoder's stride), e.g. 224",
    )
  if not 0 < data.crop_scale_min <= 1:
    fail("data.crop_scale_min", data.crop_scale_min, "expected a fraction in (0, 1]")
  for field in (
    "batch_size",
    "grad_accum_steps",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
  ):
    if config[field] < 1:
      fail(field, config[field], "expected a positive integer")
  if config.batch_size % config.grad_accum_steps:
    fail(
      "grad_accum_steps",
      config.grad_accum_steps,
      f"expected a divisor of batch_size {config.batch_size}",
    )
  for field in ("num_epochs", "total_steps", "warmup_epochs", "warmup_steps", "eval_every_steps"):
    if config[field] < 0:
      fail(field, config[field], "expected a number >= 0")
  if config.num_epochs <= 0 and config.total_steps <= 0:
    fail("total_steps", config.total_steps, "expected num_epochs or total_steps > 0")
  if config.profile_steps:
    parse_profile_steps(config.profile_steps)
  if "fcmae" in config:
    ratio = config.fcmae.mask_ratio
    if not 0 <= ratio < 1:
      fail("fcmae.mask_ratio", ratio, "expected a ratio in [0, 1)")
    patches = (data.image_size // STRIDE) ** 2
    if int(patches * (1 - ratio)) < 1:
      fail(
        "fcmae.mask_ratio",
        ratio,
        f"it leaves no visible patch of the {patches} at {data.image_size} px",
      )
    if config.fcmae.impl not in FCMAE_IMPLS:
      fail("fcmae.impl", config.fcmae.impl, "expected dense or sparse")
  if "aug" in config and not 0 <= config.aug.reprob <= 1:
    fail("aug.reprob", config.aug.reprob, "expected a probability in [0, 1]")
