"""RandAugment's costly ops compiled with Numba: the affine warp (Rotate, ShearX/Y,
TranslateX/YRel), Sharpness and Equalize.

In TensorFlow ops these cost the most of the fifteen ops, and made RandAugment cost more than
decoding and resizing the image together (docs/input.md has the per-op figures). Each kernel
computes exactly what the TensorFlow formulation it replaces did (float32 arithmetic in the same
order, rounding half to even; tests/data/test_randaugment.py holds them equal bit for bit),
releases the GIL, and runs in tf.data's threads through ``tf.numpy_function``
(``data/randaugment.py``). They compile on first use (cached next to this file when writable).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True, inline="always")
def _to_uint8(v):
  """Round half to even and clip a float32 to [0, 255] (``augment.to_uint8``)."""
  r = np.rint(v)
  return np.uint8(0 if r < 0 else (255 if r > 255 else r))


@numba.njit(nogil=True, cache=True)
def _affine(image, height, width, channels, transform, fill, out):
  """On flat views of [H, W, C] images."""
  one, zero = np.float32(1.0), np.float32(0.0)
  for oy in range(height):
    fy = np.float32(oy)
    for ox in range(width):
      fx = np.float32(ox)
      # TensorFlow's ImageProjectiveTransformV3 (bilinear, constant fill 0), on the image and
      # on a coverage channel of ones: output (x, y) samples input (a0 x + a1 y + a2, ...).
      x = transform[0] * fx + transform[1] * fy + transform[2]
      y = transform[3] * fx + transform[4] * fy + transform[5]
      x0 = np.floor(x)
      y0 = np.floor(y)
      wl, wr = (x0 + one) - x, x - x0
      wt, wb = (y0 + one) - y, y - y0
      # Corners outside the image read 0 (clamped index, weight by a 0 / 1 mask).
      ix0 = int(max(min(x0, np.float32(width)), np.float32(-2.0)))
      iy0 = int(max(min(y0, np.float32(height)), np.float32(-2.0)))
      ix1, iy1 = ix0 + 1, iy0 + 1
      mx0 = one if 0 <= ix0 < width else zero
      mx1 = one if 0 <= ix1 < width else zero
      my0 = one if 0 <= iy0 < height else zero
      my1 = one if 0 <= iy1 < height else zero
      cx0, cx1 = min(max(ix0, 0), width - 1), min(max(ix1, 0), width - 1)
      cy0, cy1 = min(max(iy0, 0), height - 1), min(max(iy1, 0), height - 1)
      m00, m01, m10, m11 = my0 * mx0, my0 * mx1, my1 * mx0, my1 * mx1
      coverage = wt * (wl * m00 + wr * m01) + wb * (wl * m10 + wr * m11)
      blank = one - coverage
      p00, p01 = (cy0 * width + cx0) * channels, (cy0 * width + cx1) * channels
      p10, p11 = (cy1 * width + cx0) * channels, (cy1 * width + cx1) * channels
      q = (oy * width + ox) * channels
      for c in range(channels):
        v00 = np.float32(image[p00 + c]) * m00
        v01 = np.float32(image[p01 + c]) * m01
        v10 = np.float32(image[p10 + c]) * m10
        v11 = np.float32(image[p11 + c]) * m11
        value = wt * (wl * v00 + wr * v01) + wb * (wl * v10 + wr * v11)
        out[q + c] = _to_uint8(value + blank * fill[c])


def affine(image: np.ndarray, transform: np.ndarray, fill: np.ndarray) -> np.ndarray:
  """uint8 [H, W, C]: output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2)
  bilinearly (transform float32 [a0, a1, a2, b0, b1, b2]); what falls outside the image blends
  into `fill` (float32 [C]) by its uncovered fraction."""
  image = np.ascontiguousarray(image)
  out = np.empty_like(image)
  h, w, c = image.shape
  _affine(
    image.ravel(), h, w, c, transform.astype(np.float32), fill.astype(np.float32), out.ravel()
  )
  return out


@numba.njit(nogil=True, cache=True)
def _sharpness(image, channels, factor, out):
  """On [H, W * C] views: the borders are kept, interior pixels blend with the SMOOTH filter."""
  height, n = image.shape
  for y in range(height):
    src, dst = image[y], out[y]
    if y == 0 or y == height - 1:
      dst[:] = src
      continue
    above, below = image[y - 1], image[y + 1]
    for j in range(channels):  # the first and last pixel of the row
      dst[j] = src[j]
      dst[n - channels + j] = src[n - channels + j]
    for j in range(channels, n - channels):
      # The 3 x 3 SMOOTH kernel: 1s around a 5.
      total = (
        np.int32(above[j - channels])
        + np.int32(above[j])
        + np.int32(above[j + channels])
        + np.int32(src[j - channels])
        + 5 * np.int32(src[j])
        + np.int32(src[j + channels])
        + np.int32(below[j - channels])
        + np.int32(below[j])
        + np.int32(below[j + channels])
      )
      # round(total / 13): never a tie (13 is odd), so the float32 convolution rounds the same.
      d = np.float32((2 * total + 13) // 26)
      dst[j] = _to_uint8(d + factor * (np.float32(src[j]) - d))


def sharpness(image: np.ndarray, factor: np.ndarray) -> np.ndarray:
  """PIL ``ImageEnhance.Sharpness``: blend with the SMOOTH-filtered image (borders kept)."""
  image = np.ascontiguousarray(image)
  out = np.empty_like(image)
  h, w, c = image.shape
  _sharpness(image.reshape(h, w * c), c, np.float32(factor), out.reshape(h, w * c))
  return out


@numba.njit(nogil=True, cache=True)
def _equalize(image, out):
  height, width, channels = image.shape
  for c in range(channels):
    hist = np.zeros(256, np.int64)
    for y in range(height):
      for x in range(width):
        hist[image[y, x, c]] += 1
    last = 0
    for v in range(256):
      if hist[v] > 0:
        last = hist[v]
    step = (height * width - last) // 255
    if step == 0:
      for y in range(height):
        for x in range(width):
          out[y, x, c] = image[y, x, c]
      continue
    lut = np.empty(256, np.uint8)
    total = 0
    for v in range(256):
      level = (total + step // 2) // step
      lut[v] = min(level, 255)
      total += hist[v]
    for y in range(height):
      for x in range(width):
        out[y, x, c] = lut[image[y, x, c]]


def equalize(image: np.ndarray) -> np.ndarray:
  """PIL ``ImageOps.equalize``: per-channel histogram equalisation."""
  image = np.ascontiguousarray(image)
  out = np.empty_like(image)
  _equalize(image, out)
  return out
