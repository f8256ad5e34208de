"""Batch-level Mixup / CutMix with label smoothing, in JAX (timm's `Mixup`, mode='batch').

This is the label mixing of the ConvNeXt V2 finetuning recipe: timm's `Mixup(mixup_alpha,
cutmix_alpha, prob=1.0, switch_prob=0.5, mode='batch', label_smoothing, correct_lam=True)`.
It runs inside the jitted train step on the global batch:

  * one lambda for the whole batch; with both alphas > 0, CutMix with probability `switch_prob`,
    otherwise Mixup; with only one alpha > 0, that one; with both 0 (or when the `prob` draw
    fails) the images are unchanged and the targets are the smoothed one-hot labels;
  * the mixing partner of example i is example B-1-i (the batch flipped, `x.flip(0)` in timm),
    and `targets = lam * y + (1 - lam) * y.flip(0)`;
  * Mixup: `lam ~ Beta(a, a)`, `x = lam * x + (1 - lam) * x.flip(0)`;
  * CutMix: `lam ~ Beta(a, a)`, a box with side ratio sqrt(1 - lam) and a uniformly random centre,
    clipped to the image (timm's `rand_bbox`), receives `x.flip(0)`; lam is then corrected to
    `1 - box_area / image_area` (correct_lam=True).

Everything has static shapes (the box is a mask built from iotas, not a dynamic slice), so it
jits, and `flip(0)` on a batch-sharded global array is a plain collective permute under GSPMD.
The alphas must be Python floats (static: they decide which Beta draws exist); `switch_prob`,
`prob` and `label_smoothing` may be Python floats or traced scalars.

timm asserts an even batch size; here an odd batch simply pairs its middle example with itself.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class MixParams(NamedTuple):
  """What one batch-level draw decided (all jax scalars)."""

  lam: jax.Array  # float32, weight of the original example (corrected for CutMix)
  use_cutmix: jax.Array  # bool
  box: tuple  # (y_lo, y_hi, x_lo, x_hi) int32, half-open; meaningful when use_cutmix


def one_hot_smoothed(labels, num_classes: int, smoothing: float = 0.0) -> jax.Array:
  """(B,) int labels -> (B, K) float32; off = smoothing / K, on = 1 - smoothing + off (timm)."""
  off_value = smoothing / num_classes
  on_value = 1.0 - smoothing + off_value
  hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_)
  return jnp.where(hot, jnp.float32(on_value), jnp.float32(off_value))


def rand_bbox(rng, height: int, width: int, lam) -> tuple:
  """timm's `rand_bbox` (margin 0): cut sides int(side * sqrt(1 - lam)), centre uniform over the
  pixels, box [c - cut // 2, c + cut // 2) clipped to the image. Returns int32 (yl, yh, xl, xh)."""
  ratio = jnp.sqrt(jnp.maximum(1.0 - jnp.asarray(lam, jnp.float32), 0.0))
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  key_y, key_x = jax.random.split(rng)
  cy = jax.random.randint(key_y, (), 0, height, dtype=jnp.int32)
  cx = jax.random.randint(key_x, (), 0, width, dtype=jnp.int32)
  yl = jnp.clip(cy - cut_h // 2, 0, height)
  yh = jnp.clip(cy + cut_h // 2, 0, height)
  xl = jnp.clip(cx - cut_w // 2, 0, width)
  xh = jnp.clip(cx + cut_w // 2, 0, width)
  return yl, yh, xl, xh


def box_mask(box, height: int, width: int) -> jax.Array:
  """(H, W) bool mask of the half-open box (yl, yh, xl, xh)."""
  yl, yh, xl, xh = box
  iy = jnp.arange(height, dtype=jnp.int32)[:, None]
  ix = jnp.arange(width, dtype=jnp.int32)[None, :]
  return (iy >= yl) & (iy < yh) & (ix >= xl) & (ix < xh)


def sample_mix_params(
  rng,
  height: int,
  width: int,
  *,
  mixup_alpha: float,
  cutmix_alpha: float,
  switch_prob: float = 0.5,
  prob: float = 1.0,
) -> MixParams:
  """One batch-level draw, as timm's `Mixup._params_per_batch` + `cutmix_bbox_and_lam`."""
  mixup_alpha, cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
  zero_box = (jnp.int32(0),) * 4
  if mixup_alpha <= 0.0 and cutmix_alpha <= 0.0:
    return MixParams(jnp.float32(1.0), jnp.bool_(False), zero_box)
  k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(rng, 5)

  if mixup_alpha > 0.0 and cutmix_alpha > 0.0:
    use_cutmix = jax.random.uniform(k_switch, ()) < switch_prob
  else:
    use_cutmix = jnp.bool_(cutmix_alpha > 0.0)

  # Only the Beta draws whose alpha is positive are made (Beta(0, 0) is undefined).
  lam_mix = (
    jax.random.beta(k_mix, mixup_alpha, mixup_alpha).astype(jnp.float32)
    if mixup_alpha > 0.0
    else jnp.float32(1.0)
  )
  if cutmix_alpha > 0.0:
    lam_cut_raw = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha).astype(jnp.float32)
    box = rand_bbox(k_box, height, width, lam_cut_raw)
    yl, yh, xl, xh = box
    area = (yh - yl) * (xh - xl)
    lam_cut = 1.0 - area.astype(jnp.float32) / jnp.float32(height * width)  # correct_lam
  else:
    box, lam_cut = zero_box, jnp.float32(1.0)
  lam = jnp.where(use_cutmix, lam_cut, lam_mix)

  # timm: `np.random.rand() < mix_prob`; uniform draws lie in [0, 1), so prob 1 always mixes.
  apply = jax.random.uniform(k_apply, ()) < prob
  lam = jnp.where(apply, lam, jnp.float32(1.0))
  use_cutmix = use_cutmix & apply
  box = tuple(jnp.where(use_cutmix, b, 0) for b in box)
  return MixParams(lam, use_cutmix, box)


def mix_batch(
  rng,
  images,
  labels,
  *,
  num_classes: int,
  mixup_alpha: float,
  cutmix_alpha: float,
  switch_prob: float = 0.5,
  label_smoothing: float = 0.0,
  prob: float = 1.0,
):
  """Mixes a (B, H, W, C) batch with its flip and returns (images, (B, K) float32 soft targets).

  Keeps the image dtype. Jit-able; `num_classes` and the alphas must be static Python numbers."""
  _, height, width, _ = images.shape
  params = sample_mix_params(
    rng,
    height,
    width,
    mixup_alpha=mixup_alpha,
    cutmix_alpha=cutmix_alpha,
    switch_prob=switch_prob,
    prob=prob,
  )
  y = one_hot_smoothed(labels, num_classes, label_smoothing)
  lam = params.lam
  targets = lam * y + (1.0 - lam) * jnp.flip(y, 0)
  if mixup_alpha <= 0.0 and cutmix_alpha <= 0.0:
    return images, targets

  flipped = jnp.flip(images, 0)
  lam_x = lam.astype(images.dtype)
  mixed = lam_x * images + (1 - lam_x) * flipped
  pasted = jnp.where(box_mask(params.box, height, width)[None, :, :, None], flipped, images)
  # lam == 1 (no mixing drawn, or a degenerate draw) leaves the batch exactly as it was.
  out = jnp.where(params.use_cutmix, pasted, jnp.where(lam == 1.0, images, mixed))
  return out, targets
