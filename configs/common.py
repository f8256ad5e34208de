"""Builds the locked run configs: the fields and their defaults from configs/schema.py, the
paper's values from the recipe tables (configs/recipes.py).

Every config file is a thin `get_config(arg=None)` that calls `pretrain_from_arg` or
`finetune_from_arg`. The fields, their meaning, defaults and checks are listed by
`python -m configs.schema` (docs/config.md). Configs are locked, so a mistyped field name is an
error.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from configs import recipes, schema
from configs.schema import ConfigError


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


def _base(job: str, variant: str, *, image_size: int, batch_size: int):
  c = schema.defaults(job, variant)
  c.data.image_size = int(image_size)
  c.batch_size = int(batch_size)
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
  c = _base("pretrain", variant, image_size=r["image_size"], batch_size=r["batch_size"])
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
  c.lock()  # fcmae.*: the schema's defaults are the recipe's
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
    stages = ", ".join(recipes.FINETUNE_STAGES)
    raise ConfigError(f"Unknown finetuning stage {stage!r}; valid: {stages}.")
  table = recipes.FINETUNE_STAGES[stage]
  if variant not in table:
    raise ConfigError(
      f"The paper has no {stage!r} recipe for {variant!r}; sizes with one: {', '.join(table)}."
    )
  r, shared = table[variant], recipes.FINETUNE_SHARED
  c = _base("finetune", variant, image_size=resolution, batch_size=r.batch_size)
  schema.check_field(c, "data.image_size")  # the resolution argument
  if stage == "in22k":
    c.data.name = "folder:/path/to/imagenet22k"  # no TFDS builder for ImageNet-22K: set yours
  c.num_epochs = int(r.epochs)
  c.warmup_epochs = float(r.warmup_epochs)
  c.eval_every_steps = 2500
  c.model.drop_path_rate = float(r.drop_path)
  c.data.crop_scale_min = float(shared["crop_scale_min"])
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
  # randaugment, reprob, mixup_switch_prob (and crop_pct, head_init_scale): the schema's defaults
  c.aug.update(
    dict(mixup=float(r.mixup), cutmix=float(r.cutmix), label_smoothing=float(r.label_smoothing))
  )
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
