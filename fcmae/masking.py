"""FCMAE's random patch masks.

A mask lives on the last stage's grid (one entry per 32x32-pixel patch), (B, L) with
L = (H/32) * (W/32); 1 = masked (removed), 0 = visible. Every sample keeps exactly
`len_keep(L, mask_ratio)` patches, which is what lets the sparse encoder use static shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from models import convnextv2, layers

PATCH_SIZE = convnextv2.TOTAL_STRIDE  # one mask entry per last-stage position (32 pixels)


def len_keep(num_patches: int, mask_ratio: float) -> int:
  """Visible patches per sample, as the reference computes it: int(L * (1 - mask_ratio))."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1); got {mask_ratio}.")
  keep = int(num_patches * (1 - mask_ratio))
  if keep < 1:
    raise ValueError(f"mask_ratio {mask_ratio} leaves no visible patch out of {num_patches}.")
  return keep


def random_mask(rng: jax.Array, batch_size: int, num_patches: int, mask_ratio: float) -> jax.Array:
  """(B, L) float32, 1 = masked, exactly len_keep visible per sample, chosen uniformly.

  As in the reference: rank the patches by Gaussian noise and keep the len_keep lowest. rng: a
  PRNG key, or one per example (B,): then each sample's mask depends on its own key alone.
  """
  keep = len_keep(num_patches, mask_ratio)
  keys = layers.example_keys(rng, batch_size)
  noise = jax.vmap(lambda key: jax.random.normal(key, (num_patches,)))(keys)
  rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
  return (rank >= keep).astype(jnp.float32)


def grid_shape(image_size: int | tuple[int, int]) -> tuple[int, int]:
  """The mask grid (h, w) of an image size, which must be a multiple of the patch size."""
  height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
  if height % PATCH_SIZE or width % PATCH_SIZE:
    raise ValueError(
      f"Image size {height}x{width} is not divisible by the patch size {PATCH_SIZE} "
      f"(the encoder's total stride); use a multiple of {PATCH_SIZE}, e.g. 224."
    )
  return height // PATCH_SIZE, width // PATCH_SIZE
