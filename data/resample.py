"""Pillow's bicubic resize, bit for bit, compiled with Numba.

``resize_bicubic(image, height, width)`` is Pillow's (13) resampling of a uint8 [H, W, C] array
with ``Image.BICUBIC``: the same filter (Keys cubic, a = -0.5, widened by the scale factor when
it shrinks, i.e. antialiased), the same fixed-point coefficients (22 fractional bits), the same
rounding, and the same order of the two one-axis passes, each rounded to uint8: horizontal then
vertical, except when the height shrinks by more than twice as many pixels as the width, where
Pillow 13 runs the vertical pass first (Pillow up to 12 always ran the horizontal pass first,
which rounds the intermediate differently: a level or two at a few pixels of sharp edges).

It is here because TensorFlow's antialiased resize (``tf.image.resize(..., antialias=True)``)
costs more than decoding the JPEG and only approximates PIL's filter, while Pillow's own C code
walks 4-byte pixels with scalar loops. Here both passes run as operations on whole rows of
contiguous memory, which the compiler vectorises: the vertical pass directly (an output row is
a weighted sum of input rows), the horizontal one on blocks of rows transposed in cache (an
output column of the block is a weighted sum of its input columns). The kernels release the
GIL, so tf.data's threads (``tf.numpy_function``) run them in parallel; they compile on first
use (cached next to this file when it is writable)."""

from __future__ import annotations

import math

import numba
import numpy as np

_PRECISION_BITS = 32 - 8 - 2  # Pillow's 8-bit resampling precision
_BLOCK = 64  # rows of the horizontal pass transposed together (fits in L1 / L2 with the taps)


@numba.njit(nogil=True, cache=True)
def _bicubic(x):
  a = -0.5
  if x < 0.0:
    x = -x
  if x < 1.0:
    return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  if x < 2.0:
    return (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return 0.0


@numba.njit(nogil=True, cache=True)
def _coefficients(in_size, out_size):
  scale = in_size / out_size
  filterscale = max(scale, 1.0)
  support = 2.0 * filterscale
  taps = min(int(math.ceil(support)) * 2 + 1, in_size)
  inverse = 1.0 / filterscale
  first = np.empty(out_size, np.int32)
  weights = np.zeros((out_size, taps), np.int32)
  w = np.empty(taps + 2, np.float64)
  for i in range(out_size):
    center = (i + 0.5) * scale
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    total = 0.0
    for x in range(hi - lo):
      w[x] = _bicubic((x + lo - center + 0.5) * inverse)
      total += w[x]
    # Shift the window left where it would run past the end (zero weights in front), so a
    # kernel can always read `taps` inputs from `first`.
    start = min(lo, in_size - taps)
    first[i] = start
    for x in range(hi - lo):
      v = w[x] / total if total != 0.0 else w[x]
      v = v * (1 << _PRECISION_BITS)
      weights[i, lo - start + x] = int(v - 0.5) if v < 0 else int(v + 0.5)
  return first, weights


def coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for a whole-axis resize:
  (first input index int32 [out], fixed-point weights int32 [out, taps]); taps past an output's
  support are 0, and every output's first index leaves room for all taps."""
  return _coefficients(int(in_size), int(out_size))


@numba.njit(nogil=True, cache=True, inline="always")
def _clip8(v):
  v >>= _PRECISION_BITS
  return 0 if v < 0 else (255 if v > 255 else v)


@numba.njit(nogil=True, cache=True)
def _vertical(src, first, weights, out):
  """out[i] = clip8(sum_k weights[i, k] * src[first[i] + k]) over rows of [rows, n] uint8."""
  half = np.int32(1 << (_PRECISION_BITS - 1))
  taps = weights.shape[1]
  n = src.shape[1]
  acc = np.empty(n, np.int32)
  for i in range(out.shape[0]):
    acc[:] = half
    f = first[i]
    for k in range(taps):
      w = weights[i, k]
      if w != 0:
        row = src[f + k]
        for j in range(n):
          acc[j] += np.int32(row[j]) * w
    o = out[i]
    for j in range(n):
      o[j] = _clip8(acc[j])


@numba.njit(nogil=True, cache=True)
def _transpose_in(block, columns):
  """columns[j, i * C + c] = block[i, j, c]: a block of rows [b, W, C] -> its columns."""
  b, width, channels = block.shape
  if channels == 3:  # spelled out: the compiler unrolls it
    for i in range(b):
      row = block[i]
      for j in range(width):
        columns[j, 3 * i] = row[j, 0]
        columns[j, 3 * i + 1] = row[j, 1]
        columns[j, 3 * i + 2] = row[j, 2]
    return
  for i in range(b):
    for j in range(width):
      for c in range(channels):
        columns[j, i * channels + c] = block[i, j, c]


@numba.njit(nogil=True, cache=True)
def _transpose_out(filtered, block):
  """block[i, x, c] = filtered[x, i * C + c]: the inverse of _transpose_in."""
  b, width, channels = block.shape
  if channels == 3:
    for i in range(b):
      row = block[i]
      for x in range(width):
        row[x, 0] = filtered[x, 3 * i]
        row[x, 1] = filtered[x, 3 * i + 1]
        row[x, 2] = filtered[x, 3 * i + 2]
    return
  for i in range(b):
    for x in range(width):
      for c in range(channels):
        block[i, x, c] = filtered[x, i * channels + c]


@numba.njit(nogil=True, cache=True)
def _horizontal(src, first, weights, out):
  """out[r, x] = clip8(sum_k weights[x, k] * src[r, first[x] + k]) for [rows, W, C] uint8.

  _BLOCK rows at a time: the block is transposed into a small buffer (columns become rows of
  block * C bytes, in cache), filtered row-wise like the vertical pass, and transposed back."""
  half = np.int32(1 << (_PRECISION_BITS - 1))
  rows, width, channels = src.shape
  out_width = out.shape[1]
  taps = weights.shape[1]
  columns = np.empty((width, _BLOCK * channels), np.uint8)
  filtered = np.empty((out_width, _BLOCK * channels), np.uint8)
  acc = np.empty(_BLOCK * channels, np.int32)
  for r0 in range(0, rows, _BLOCK):
    b = min(_BLOCK, rows - r0)
    m = b * channels
    _transpose_in(src[r0 : r0 + b], columns)
    for x in range(out_width):
      for q in range(m):
        acc[q] = half
      f = first[x]
      for k in range(taps):
        w = weights[x, k]
        column = columns[f + k]
        for q in range(m):
          acc[q] += np.int32(column[q]) * w
      fx = filtered[x]
      for q in range(m):
        fx[q] = _clip8(acc[q])
    _transpose_out(filtered, out[r0 : r0 + b])


@numba.njit(nogil=True, cache=True)
def _resize(image, height, width):
  in_h, in_w, channels = image.shape
  if in_h == height and in_w == width:
    return image.copy()
  y_first, y_weights = _coefficients(in_h, height)
  x_first, x_weights = _coefficients(in_w, width)
  # Pillow 13's order (ImagingResampleInner): vertical first when the height shrinks by more
  # than twice as many pixels as the width.
  vertical_first = in_h - height > 0 and in_h - height > 2 * (in_w - width)
  if vertical_first:
    tall = np.empty((height, in_w, channels), np.uint8)
    _vertical(image.reshape(in_h, -1), y_first, y_weights, tall.reshape(height, -1))
    if in_w == width:
      return tall
    out = np.empty((height, width, channels), np.uint8)
    _horizontal(tall, x_first, x_weights, out)
    return out
  if in_w != width:
    # Only the rows the vertical pass reads (all of them when the height is kept).
    lo, hi = 0, in_h
    if in_h != height:
      lo, hi = y_first[0], y_first[-1] + y_weights.shape[1]
    wide = np.empty((hi - lo, width, channels), np.uint8)
    _horizontal(image[lo:hi], x_first, x_weights, wide)
    if in_h == height:
      return wide
    y_first = (y_first - lo).astype(np.int32)
  else:
    wide = image
  out = np.empty((height, width, channels), np.uint8)
  _vertical(wide.reshape(wide.shape[0], -1), y_first, y_weights, out.reshape(height, -1))
  return out


def resize_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [H, W, C] -> uint8 [height, width, C], equal to Pillow 13's BICUBIC resize."""
  image = np.ascontiguousarray(image, dtype=np.uint8)
  return _resize(image, int(height), int(width))
