"""The paper's training recipes: every number the configs use comes from here.

Source: ConvNeXt V2 (Woo et al., arXiv 2301.00808), Table 8 (FCMAE pretraining), Tables 9-11
(ImageNet-1K finetuning per size), Table 12 (ImageNet-22K intermediate finetuning) and Table 13
(22K -> 1K finetuning), as docs/reference.md sections 2 and 3 set them out. Learning rates are
*base* rates: lr = base_lr * batch_size / 256.

Choices where the paper is silent are marked "(ours)".
"""

from __future__ import annotations

import dataclasses

SIZES = ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")

# ----------------------------------------------------------------------------------------------
# FCMAE pretraining (Table 8): one recipe for every size.

PRETRAIN = dict(
  b1=0.9,
  b2=0.95,
  eps=1e-8,  # eps: PyTorch's AdamW default (ours; not in the table)
  base_lr=1.5e-4,
  weight_decay=0.05,
  batch_size=4096,
  epochs=1600,
  epoch_options=(800, 1600),  # the paper reports both
  warmup_epochs=40,
  min_lr=0.0,  # cosine to 0
  crop_scale_min=0.2,  # RandomResizedCrop(224, scale=(0.2, 1)), bicubic, + flip
  image_size=224,
  mask_ratio=0.6,
  decoder_dim=512,
  decoder_depth=1,
  norm_pix_loss=True,
)

# ----------------------------------------------------------------------------------------------
# Finetuning: values shared by every size and stage.

FINETUNE_SHARED = dict(
  b1=0.9,
  b2=0.999,
  eps=1e-8,
  head_init_scale=0.001,
  randaugment="rand-m9-mstd0.5-inc1",
  reprob=0.25,  # random erasing, pixel mode, count 1
  min_lr=1e-6,
  mixup_switch_prob=0.5,  # mixup <-> cutmix, batch mode
  crop_scale_min=0.08,  # RandomResizedCrop(scale=(0.08, 1)), bicubic, + flip
  crop_pct=0.875,  # eval: shorter side int(224 / 0.875) = 256, center crop
)


@dataclasses.dataclass(frozen=True)
class Finetune:
  """One column of a finetuning table. `ema_decay` 0 = no EMA."""

  epochs: int
  warmup_epochs: float
  base_lr: float
  layer_decay: float
  layer_decay_scheme: str  # 'single' | 'group' (group needs depths (3, 3, 27, 3))
  weight_decay: float
  drop_path: float
  mixup: float
  cutmix: float
  label_smoothing: float
  batch_size: int = 1024
  ema_decay: float = 0.9999


# Tables 9-11: ImageNet-1K finetuning after FCMAE pretraining, batch 1024, EMA 0.9999.
# B/L base lr: the paper's table prints 6.25e-3, a typo; the repository's command uses 6.25e-4.
IN1K = {
  #                 epochs warm blr      ld   scheme     wd    dpath mixup cutmix smooth
  "atto": Finetune(600, 0, 2e-4, 0.9, "single", 0.3, 0.1, 0.0, 0.0, 0.2),
  "femto": Finetune(600, 0, 2e-4, 0.9, "single", 0.05, 0.0, 0.3, 0.3, 0.2),
  "pico": Finetune(600, 0, 2e-4, 0.9, "single", 0.3, 0.0, 0.3, 0.3, 0.2),
  "nano": Finetune(600, 0, 2e-4, 0.9, "single", 0.3, 0.1, 0.5, 0.5, 0.2),
  "tiny": Finetune(300, 40, 8e-4, 0.9, "single", 0.05, 0.2, 0.8, 1.0, 0.1),
  "base": Finetune(100, 20, 6.25e-4, 0.6, "group", 0.05, 0.1, 0.8, 1.0, 0.1),
  "large": Finetune(100, 20, 6.25e-4, 0.6, "group", 0.05, 0.2, 0.8, 1.0, 0.1),
  "huge": Finetune(50, 10, 1.25e-3, 0.75, "single", 0.05, 0.3, 0.8, 1.0, 0.1),
}

# Table 12: ImageNet-22K intermediate finetuning (nano..huge only): 90 epochs, warmup 5,
# blr 2.5e-4, wd .05, batch 4096, mixup .8 / cutmix 1, smoothing .1, no EMA.
# The layer-decay scheme is not stated; we use each size's IN-1K scheme (ours).
IN22K = {
  size: Finetune(
    90,
    5,
    2.5e-4,
    decay,
    IN1K[size].layer_decay_scheme,
    0.05,
    drop_path,
    0.8,
    1.0,
    0.1,
    batch_size=4096,
    ema_decay=0.0,
  )
  for size, decay, drop_path in [
    ("nano", 0.9, 0.0),
    ("tiny", 0.9, 0.0),
    ("base", 0.8, 0.1),
    ("large", 0.8, 0.1),
    ("huge", 0.8, 0.3),
  ]
}

# Table 13: 22K -> 1K finetuning at 224 or 384: blr 2.5e-5, wd 1e-8, batch 512, no warmup, no
# mixup/cutmix, EMA .9999 except Huge. Label smoothing is not stated: .1 (ours, as ConvNeXt V1).
IN22K_TO_IN1K = {
  size: Finetune(
    epochs,
    0,
    2.5e-5,
    decay,
    IN1K[size].layer_decay_scheme,
    1e-8,
    drop_path,
    0.0,
    0.0,
    0.1,
    batch_size=512,
    ema_decay=ema,
  )
  for size, epochs, decay, drop_path, ema in [
    ("nano", 90, 0.9, 0.1, 0.9999),
    ("tiny", 90, 0.9, 0.1, 0.9999),
    ("base", 30, 0.8, 0.2, 0.9999),
    ("large", 30, 0.8, 0.3, 0.9999),
    ("huge", 30, 0.85, 0.5, 0.0),
  ]
}

FINETUNE_STAGES = {"in1k": IN1K, "in22k": IN22K, "in22k_to_in1k": IN22K_TO_IN1K}

# ----------------------------------------------------------------------------------------------
# How each size is run (ours, not the paper's): recompute blocks in the backward pass where
# activations are large, and scan the identical blocks of a stage (a shorter compile) only there.
# Scanning without recomputation costs memory on TPU: FCMAE-Base scanned needs far more memory
# per chip than unrolled, whose longer compile is paid once per job with the compilation cache
# (docs/tpu.md has the figures and commands).
SCAN_SIZES = ("large", "huge")
REMAT_SIZES = ("large", "huge")
# Shard the parameters and optimizer state over every device (mesh data 1, fsdp -1) where the
# replicated AdamW state would crowd out the activations: Huge's parameters and two AdamW
# moments in float32 are about 660M x 12 bytes = 7.4 GiB, which with its gradients leaves no
# room on a 16 GiB v5e chip at any slice size (docs/tpu.md).
FSDP_SIZES = ("huge",)


# ----------------------------------------------------------------------------------------------
# What the config files set from these tables, by config field, as configs/schema.py's listing
# (docs/config.md) shows it.


def _g(value) -> str:
  """1.5e-4 as '1.5e-4', 0.05 as '0.05', 4096 as '4096'."""
  if isinstance(value, float) and value and abs(value) < 1e-2:
    mantissa, exponent = f"{value:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"
  return f"{value:g}" if isinstance(value, float) else str(value)


def _recipe(pretrain: str = "", shared: str = "", table: str = "", unit: str = "") -> str:
  """'pretraining X; finetuning Y' from configs/recipes.py: PRETRAIN[pretrain],
  FINETUNE_SHARED[shared], or the range of the finetuning tables' `table` column."""
  parts = []
  if pretrain:
    parts.append(f"pretraining {_g(PRETRAIN[pretrain])}")
  if shared:
    parts.append(f"finetuning {_g(FINETUNE_SHARED[shared])}")
  if table:
    column = {getattr(r, table) for stage in FINETUNE_STAGES.values() for r in stage.values()}
    low, high = min(column), max(column)
    by = f"{_g(low)} to {_g(high)} by size and stage" if low != high else _g(low)
    parts.append(f"finetuning {by}")
  return "; ".join(parts) + unit


# What the config files set from configs/recipes.py (the listing shows it as the default:
# `optim.base_lr` is 0.0 here and the recipe's value in every config file).
NOTES = {
  "model.drop_path_rate": _recipe(table="drop_path"),
  "data.crop_scale_min": _recipe("crop_scale_min", "crop_scale_min"),
  "batch_size": _recipe("batch_size", table="batch_size"),
  "num_epochs": _recipe("epochs", table="epochs") + " (pretraining: or 800 with `:800`)",
  "warmup_epochs": _recipe("warmup_epochs", table="warmup_epochs"),
  "optim.base_lr": _recipe("base_lr", table="base_lr", unit="; lr = base_lr x batch_size / 256"),
  "optim.min_lr": _recipe("min_lr", "min_lr"),
  "optim.b1": _recipe("b1", "b1"),
  "optim.b2": _recipe("b2", "b2"),
  "optim.eps": _recipe("eps", "eps"),
  "optim.weight_decay": _recipe("weight_decay", table="weight_decay"),
  "optim.layer_decay": _recipe(table="layer_decay"),
  "optim.layer_decay_scheme": "finetuning 'group' for Base and Large, else 'single'",
  "optim.ema_decay": _recipe(table="ema_decay"),
  "aug.mixup": _recipe(table="mixup"),
  "aug.cutmix": _recipe(table="cutmix"),
  "aug.label_smoothing": _recipe(table="label_smoothing"),
}
