"""Weights of one input channel count loaded into a model of another: the stem conv adapted as
timm's `timm.models._manipulate.adapt_input_conv` does (the reference for the tests).

  3 -> 1      summed over R, G, B (a greyscale image of value v then gives what v, v, v gave);
  3 -> C      the RGB filters repeated to C channels and scaled by 3 / C (C = 2 or C > 3);
  C -> C      unchanged. Other pairs (1 -> 4, 4 -> 3, ...) are refused (timm has no such rule).

Our stem kernel is HWIO (4, 4, C, C0); timm's is OIHW, so the channel axis is 2 here, 1 there.
"""

from __future__ import annotations

import math

import numpy as np

from models.formats import ConversionError


def stem_channels(encoder: dict) -> int:
  """Input channels of an encoder's params (the stem conv's input width)."""
  return int(np.shape(encoder["stem"]["conv"]["kernel"])[2])


def adapt_kernel(kernel, in_chans: int) -> np.ndarray:
  """A stem kernel (kh, kw, C_src, C0) adapted to in_chans input channels (float32)."""
  kernel = np.asarray(kernel, np.float32)
  have = kernel.shape[2]
  if in_chans < 1:
    raise ConversionError(f"in_chans must be >= 1; got {in_chans}.")
  if have == in_chans:
    return kernel
  if have != 3:
    raise ConversionError(
      f"Cannot adapt a {have}-channel stem to {in_chans} channels: only 3-channel (RGB) weights "
      "are adapted, as timm's adapt_input_conv does."
    )
  if in_chans == 1:
    return kernel.sum(axis=2, keepdims=True)
  repeat = math.ceil(in_chans / 3)
  return np.tile(kernel, (1, 1, repeat, 1))[:, :, :in_chans] * np.float32(3 / in_chans)


def adapt_encoder(encoder: dict, in_chans: int) -> tuple[dict, str | None]:
  """(encoder params with the stem adapted to in_chans, a note saying what was adapted or None).
  The tree is copied where it changes, never modified in place."""
  have = stem_channels(encoder)
  if have == in_chans:
    return encoder, None
  conv = {
    **encoder["stem"]["conv"],
    "kernel": adapt_kernel(encoder["stem"]["conv"]["kernel"], in_chans),
  }
  adapted = {**encoder, "stem": {**encoder["stem"], "conv": conv}}
  return adapted, f"stem adapted from {have} to {in_chans} input channels (timm adapt_input_conv)"
