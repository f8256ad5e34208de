"""data/on_device.py: normalization of uint8 batches, and random erasing drawn per example (the
same box whichever batch position or micro-batch the example has)."""

import jax
import jax.numpy as jnp
import numpy as np

from data import on_device
from data.info import IMAGENET_MEAN, IMAGENET_STD


def test_normalize_is_the_imagenet_normalization():
  pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), np.uint8)
  expected = (pixels / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
  np.testing.assert_allclose(
    on_device.normalize(jnp.asarray(pixels)), expected, rtol=1e-6, atol=1e-6
  )


def test_random_erasing_erases_one_box_per_example_from_its_own_key():
  size, batch = 32, 16
  images = on_device.normalize(
    jnp.asarray(np.random.default_rng(1).integers(0, 256, (batch, size, size, 3), np.uint8))
  )
  keys = jax.random.split(jax.random.key(0), batch)
  erase = jax.jit(on_device.random_erasing, static_argnums=2)
  np.testing.assert_array_equal(erase(keys, images, 0.0), images)
  erased = np.asarray(erase(keys, images, 1.0))
  for e, x in zip(erased, np.asarray(images)):
    changed = np.any(e != x, axis=-1)  # (H, W)
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert changed.sum() == box  # one rectangle
    assert 0.01 < box / size**2 < 0.4
    assert abs(float(e[changed].std()) - 1.0) < 0.3  # N(0, 1) noise in normalized space
  # An example's box depends on its key alone: the second half of the batch on its own.
  half = np.asarray(erase(keys[batch // 2 :], images[batch // 2 :], 1.0))
  np.testing.assert_array_equal(half, erased[batch // 2 :])
  # With probability 0.25, about a quarter of the images are erased.
  many = jax.random.split(jax.random.key(1), 400)
  tiles = jnp.broadcast_to(images[:1], (400, size, size, 3))
  hit = np.any(np.asarray(erase(many, tiles, 0.25)) != np.asarray(tiles), axis=(1, 2, 3))
  assert 0.18 < hit.mean() < 0.32
