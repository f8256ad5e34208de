"""The built-in demo data set: 12 classes of synthetic 64x64 shapes and textures.

Generated with numpy from fixed seeds (identical on every machine, no files, no network): enough
for the demo runs and the tests to pretrain, finetune and measure accuracy in minutes on a CPU.
"""

from __future__ import annotations

import functools

import numpy as np

CLASSES = (
  "circle",
  "square",
  "triangle",
  "horizontal_stripes",
  "vertical_stripes",
  "diagonal_stripes",
  "checkerboard",
  "concentric_rings",
  "plus",
  "blob",
  "annulus",
  "x_cross",
)
IMAGE_SIZE = 64
PER_CLASS = {"train": 100, "val": 20}
_SEED = 20240601
_SPLITS = {"train": "train", "val": "val", "validation": "val"}


def _demo_masks(cls: int, n: int, rng: np.random.Generator) -> np.ndarray:
  """Foreground coverage in [0, 1], float32 [n, 64, 64], for `n` images of class `cls`."""
  size = IMAGE_SIZE
  grid = np.arange(size, dtype=np.float32) + 0.5
  yy, xx = grid[None, :, None], grid[None, None, :]  # [1, 64, 1], [1, 1, 64]

  def u(lo, hi):  # one value per image, broadcastable to [n, 64, 64]
    return rng.uniform(lo, hi, size=(n, 1, 1)).astype(np.float32)

  def rotated(cx, cy, theta):
    dx, dy = xx - cx, yy - cy
    return np.cos(theta) * dx + np.sin(theta) * dy, -np.sin(theta) * dx + np.cos(theta) * dy

  def solid(sdf):  # signed distance (pixels, <0 inside) -> antialiased coverage
    return np.clip(0.5 - sdf, 0.0, 1.0)

  def wave(t, period, phase):  # soft stripes along coordinate t
    return np.clip(3.0 * np.sin(2 * np.pi * t / period + phase) + 0.5, 0.0, 1.0)

  deg = np.pi / 180
  name = CLASSES[cls]
  cx, cy = u(22, 42), u(22, 42)
  if name == "circle":
    return solid(np.hypot(xx - cx, yy - cy) - u(9, 20))
  if name == "square":
    a, b = rotated(cx, cy, u(-15, 15) * deg)
    return solid(np.maximum(np.abs(a), np.abs(b)) - u(8, 17))
  if name == "triangle":  # equilateral, pointing up (+-15 deg)
    radius, theta = u(12, 24), u(-15, 15) * deg
    sdf = np.full((n, size, size), -np.inf, np.float32)
    for k in range(3):  # outward edge normals at 90, 210, 330 degrees (+theta), y down
      phi = theta + (90 + 120 * k) * deg
      sdf = np.maximum(sdf, np.cos(phi) * (xx - cx) + np.sin(phi) * (yy - cy))
    return solid(sdf - radius / 2)
  if name in ("horizontal_stripes", "vertical_stripes", "diagonal_stripes"):
    base = {"horizontal_stripes": 90.0, "vertical_stripes": 0.0}.get(name)
    if base is None:
      base = np.where(rng.random((n, 1, 1)) < 0.5, 45.0, 135.0)
    theta = (base + u(-10, 10)) * deg
    return wave(np.cos(theta) * xx + np.sin(theta) * yy, u(6, 14), u(0, 2 * np.pi))
  if name == "checkerboard":
    a, b = rotated(cx, cy, u(-10, 10) * deg)
    cell = u(5, 11)
    s = np.sin(np.pi * a / cell + u(0, np.pi)) * np.sin(np.pi * b / cell + u(0, np.pi))
    return np.clip(4.0 * s + 0.5, 0.0, 1.0)
  if name == "concentric_rings":
    return wave(np.hypot(xx - cx, yy - cy), u(6, 11), u(0, 2 * np.pi))
  if name in ("plus", "x_cross"):
    theta = (u(-10, 10) + (45.0 if name == "x_cross" else 0.0)) * deg
    a, b = rotated(cx, cy, theta)
    arm, half = u(13, 22), u(2.5, 5.0)
    bar1 = np.maximum(np.abs(a) - arm, np.abs(b) - half)
    bar2 = np.maximum(np.abs(a) - half, np.abs(b) - arm)
    return solid(np.minimum(bar1, bar2))
  if name == "blob":  # soft radial gradient, no edges
    sigma = u(6, 14)
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
  if name == "annulus":
    outer, width = u(13, 22), u(3, 6)
    return solid(np.abs(np.hypot(xx - cx, yy - cy) - (outer - width / 2)) - width / 2)
  raise AssertionError(name)


@functools.cache
def arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
  """The built-in demo split: (images uint8 [N, 64, 64, 3], labels int32 [N]).

  Classes are interleaved (label of example i is i % num_classes). Each image
  draws position/size/angle/period, a dark and a light colour (randomly
  assigned to foreground/background) and pixel noise from an RNG seeded by
  (split, class), so the arrays are identical on every call and machine.
  The returned arrays are read-only (cached).
  """
  if split not in _SPLITS:
    raise ValueError(
      f"The demo data has the splits 'train' and 'val' ('validation'); got {split!r}."
    )
  split = _SPLITS[split]
  per_class = PER_CLASS[split]
  num_classes = len(CLASSES)
  images = np.empty((per_class * num_classes, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  for cls in range(num_classes):
    rng = np.random.default_rng([_SEED, 0 if split == "train" else 1, cls])
    mask = _demo_masks(cls, per_class, rng)[..., None]  # [n, 64, 64, 1]
    dark = rng.uniform(0, 100, (per_class, 1, 1, 3))
    light = rng.uniform(155, 255, (per_class, 1, 1, 3))
    swap = rng.random((per_class, 1, 1, 1)) < 0.5
    fg, bg = np.where(swap, dark, light), np.where(swap, light, dark)
    img = bg + (fg - bg) * mask + rng.normal(0.0, 6.0, mask.shape[:3] + (3,))
    images[cls::num_classes] = np.clip(np.round(img), 0, 255).astype(np.uint8)
  labels = np.tile(np.arange(num_classes, dtype=np.int32), per_class)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels
