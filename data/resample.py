"""PIL's bicubic resize, bit for bit, compiled with Numba.

``resize_bicubic(image, height, width)`` is Pillow's resampling of a uint8 [H, W, C] array
with ``Image.BICUBIC``: the same filter (Keys cubic, a = -0.5, widened by the scale factor when
it shrinks, i.e. antialiased), the same fixed-point coefficients (22 fractional bits), the same
order (horizontal pass first, rounded to uint8, then vertical; Pillow up to 12 resizes every
image this way, Pillow 13 runs the vertical pass first for some sizes, which rounds the
intermediate differently) and the same rounding. It is here because TensorFlow's antialiased
resize (``tf.image.resize(..., antialias=True)``) costs more than decoding the JPEG and only
approximates PIL's filter, while Pillow's own C code walks 4-byte pixels with scalar loops; this
one runs both passes as row operations over contiguous memory that the compiler vectorises, and
releases the GIL, so tf.data's threads (``tf.numpy_function``) run it in parallel.

The kernels compile on first use (cached next to this file when it is writable)."""

from __future__ import annotations

import math

import numba
import numpy as np

_PRECISION_BITS = 32 - 8 - 2  # Pillow's 8-bit resampling precision


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


@numba.njit(nogil=True, cache=True)
def _rows(src, first, weights, out):
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
      v = acc[j] >> _PRECISION_BITS
      o[j] = 0 if v < 0 else (255 if v > 255 else v)


@numba.njit(nogil=True, cache=True)
def _transpose(src, out):
  """[a, b, c] -> [b, a, c] (a copy)."""
  for i in range(src.shape[0]):
    for j in range(src.shape[1]):
      for c in range(src.shape[2]):
        out[j, i, c] = src[i, j, c]


def resize_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [H, W, C] -> uint8 [height, width, C], equal to Pillow's BICUBIC resize."""
  image = np.ascontiguousarray(image, dtype=np.uint8)
  in_h, in_w, channels = image.shape
  height, width = int(height), int(width)
  if (in_h, in_w) == (height, width):
    return image.copy()
  y_first, y_weights = coefficients(in_h, height)
  if in_w != width:
    # Horizontal pass on the transposed image (a row pass there), only over the rows the
    # vertical pass reads; Pillow rounds this intermediate to uint8 too.
    lo, hi = (
      (0, in_h) if in_h == height else (int(y_first[0]), int(y_first[-1]) + len(y_weights[0]))
    )
    x_first, x_weights = coefficients(in_w, width)
    flipped = np.empty((in_w, hi - lo, channels), np.uint8)
    _transpose(image[lo:hi], flipped)
    resized = np.empty((width, hi - lo, channels), np.uint8)
    _rows(flipped.reshape(in_w, -1), x_first, x_weights, resized.reshape(width, -1))
    image = np.empty((hi - lo, width, channels), np.uint8)
    _transpose(resized, image)
    y_first = y_first - lo
  if in_h == height:
    return image
  out = np.empty((height, width, channels), np.uint8)
  _rows(image.reshape(image.shape[0], -1), y_first, y_weights, out.reshape(height, -1))
  return out
