"""The parts of the input pipeline that run inside the jitted step, on the accelerator.

Batches cross to the device as uint8 pixels (a quarter of float32's bytes); `normalize` turns
them into normalized floats there (ImageNet's statistics, or the data's own, per channel). Random
erasing (timm's `RandomErasing`, pixel mode, one box) draws normal noise in that normalized space,
so it runs here too, per example, from the example's own key: the same image gets the same box
whichever micro-batch, device or process it lands on. Mixup / CutMix (`data/mixup.py`) also run on the device, on the whole batch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from data.info import IMAGENET_MEAN, IMAGENET_STD


def normalize(images: jax.Array, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jax.Array:
  """uint8 (B, H, W, C) -> float32 (B, H, W, C): x / 255, then (x - mean) / std per channel (the
  statistics of data/normalization.py; ImageNet's by default, for 3 channels)."""
  if len(mean) != images.shape[-1] or len(std) != images.shape[-1]:
    raise ValueError(
      f"normalisation statistics for {len(mean)} channels, images of {images.shape[-1]}"
    )
  x = images.astype(jnp.float32) * (1.0 / 255.0)
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _erase_one(
  key: jax.Array,
  image: jax.Array,
  probability: float,
  min_area: float,
  max_area: float,
  log_aspect: tuple[float, float],
  attempts: int,
) -> jax.Array:
  height, width, _ = image.shape
  k_apply, k_area, k_aspect, k_position, k_noise = jax.random.split(key, 5)
  target = (
    jax.random.uniform(k_area, (attempts,), minval=min_area, maxval=max_area) * height * width
  )
  aspect = jnp.exp(
    jax.random.uniform(k_aspect, (attempts,), minval=log_aspect[0], maxval=log_aspect[1])
  )
  h = jnp.round(jnp.sqrt(target * aspect))
  w = jnp.round(jnp.sqrt(target / aspect))
  valid = (w < width) & (h < height)
  first = jnp.argmax(valid)  # the first box that fits, as timm's loop takes
  h, w = h[first], w[first]
  apply = (jax.random.uniform(k_apply) < probability) & jnp.any(valid)
  u = jax.random.uniform(k_position, (2,))
  top = jnp.minimum(jnp.floor(u[0] * (height - h + 1)), height - h)  # randint(0, H - h)
  left = jnp.minimum(jnp.floor(u[1] * (width - w + 1)), width - w)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w) & apply  # (H, W)
  noise = jax.random.normal(k_noise, image.shape, image.dtype)
  return jnp.where(box[:, :, None], noise, image)


def random_erasing(
  keys: jax.Array,
  images: jax.Array,
  probability: float = 0.25,
  *,
  min_area: float = 0.02,
  max_area: float = 1 / 3,
  log_aspect: tuple[float, float] = (math.log(0.3), math.log(1 / 0.3)),
  attempts: int = 10,
) -> jax.Array:
  """Erases one random box of each normalized image (B, H, W, C) with N(0, 1) noise.

  keys (B,): one PRNG key per example. With probability `probability` per image, a box of area
  U(min_area, max_area) * H * W and log aspect U(log_aspect) replaces its pixels: the first of
  `attempts` boxes with h < H and w < W, at a uniformly random position, as timm does."""
  if probability <= 0:
    return images
  erase = lambda key, image: _erase_one(
    key, image, probability, min_area, max_area, log_aspect, attempts
  )
  return jax.vmap(erase)(keys, images)
