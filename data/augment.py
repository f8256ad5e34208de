"""Image ops in TensorFlow with *stateless* randomness: crops, resizes, flips, normalisation,
random erasing.

Every random op takes an explicit ``seed`` (an int32/int64 tensor of shape [2]) and draws its
randomness with ``tf.random.stateless_*``. The input pipeline (``data/pipeline.py``) derives that
seed from (run seed, epoch, position in the epoch), so an augmented example is a pure function of
those and does not depend on tf.data parallelism, prefetching or the resume step.

Images flow through the ops as ``uint8`` tensors of shape [H, W, 3] (like PIL images in the timm
/ torchvision recipes this mirrors) until ``normalize``, which produces float32 in
ImageNet-normalized space; random erasing works in that normalized space, as in timm. The
recipes that chain these ops are in ``data/transforms.py``; RandAugment is in
``data/randaugment.py``.

Known differences from the PyTorch/PIL reference: bicubic resizes use
``tf.image.resize(..., antialias=True)``, which approximates (not bit-matches) PIL's filter; the
random streams are Philox (TF) rather than torch/python ``random``.
"""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def split_seed(seed: tf.Tensor, num: int) -> tf.Tensor:
  """Derives `num` independent stateless seeds ([num, 2]) from `seed`."""
  return tf.random.experimental.stateless_split(seed, num=num)


def uniform(seed, shape=(), minval=0.0, maxval=1.0):
  return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval, dtype=tf.float32)


def to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Rounds and clips a float image in [0, 255] to uint8 (as PIL would store it)."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _resize(image: tf.Tensor, height, width, method: str = 'bicubic') -> tf.Tensor:
  """Antialiased resize of an [H, W, C] image to [height, width, C] uint8."""
  new_size = tf.cast(tf.stack([height, width]), tf.int32)
  out = tf.image.resize(tf.cast(image, tf.float32), new_size, method=method, antialias=True)
  return to_uint8(out)


def normalize(image: tf.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> tf.Tensor:
  """uint8 [H, W, 3] -> float32 [H, W, 3]: scale to [0, 1] then (x - mean) / std."""
  x = tf.cast(image, tf.float32) / 255.0
  return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


# --------------------------------------------------------------------------
# Crops, resizes, flips
# --------------------------------------------------------------------------

def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, size: int,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        method: str = 'bicubic', attempts: int = 10) -> tf.Tensor:
  """torchvision ``RandomResizedCrop``: uint8 [H, W, 3] -> uint8 [size, size, 3].

  Same parameter sampling as torchvision: up to `attempts` tries of
  (area fraction ~ U(scale), log aspect ~ U(log ratio)); the first crop that
  fits is used, otherwise a central crop with the aspect ratio clamped to
  `ratio`. The tries are drawn all at once (vectorised) and the first valid
  one is selected, which is distributionally identical to the sequential loop.
  """
  shape = tf.shape(image)
  height = tf.cast(shape[0], tf.float32)
  width = tf.cast(shape[1], tf.float32)
  area = height * width
  s = split_seed(seed, 3)
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  target_area = area * uniform(s[0], [attempts], scale[0], scale[1])  # [attempts]
  aspect = tf.exp(uniform(s[1], [attempts], log_ratio[0], log_ratio[1]))  # [attempts]
  w = tf.round(tf.sqrt(target_area * aspect))
  h = tf.round(tf.sqrt(target_area / aspect))
  valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = tf.argmax(tf.cast(valid, tf.int32))  # index of the first valid try (0 if none)
  found = tf.reduce_any(valid)

  # Fallback: central crop, aspect ratio clamped into `ratio`.
  in_ratio = width / height
  fb_w = tf.where(in_ratio > ratio[1], tf.round(height * ratio[1]), width)
  fb_h = tf.where(in_ratio < ratio[0], tf.round(width / ratio[0]), height)

  crop_w = tf.where(found, tf.gather(w, first), fb_w)
  crop_h = tf.where(found, tf.gather(h, first), fb_h)
  u = uniform(s[2], [2])
  # randint(0, H - h) inclusive, as in torchvision.
  rand_top = tf.minimum(tf.floor(u[0] * (height - crop_h + 1)), height - crop_h)
  rand_left = tf.minimum(tf.floor(u[1] * (width - crop_w + 1)), width - crop_w)
  top = tf.where(found, rand_top, tf.floor((height - crop_h) / 2))
  left = tf.where(found, rand_left, tf.floor((width - crop_w) / 2))

  offsets = tf.cast(tf.stack([top, left, 0.0]), tf.int32)
  sizes = tf.cast(tf.stack([crop_h, crop_w, -1.0]), tf.int32)
  crop = tf.slice(image, offsets, sizes)  # [crop_h, crop_w, 3]
  out = _resize(crop, size, size, method)
  return tf.ensure_shape(out, [size, size, None])


def random_horizontal_flip(image: tf.Tensor, seed: tf.Tensor, prob: float = 0.5) -> tf.Tensor:
  """Mirrors the image left-right with probability `prob`."""
  flip = uniform(seed) < prob
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def resize_shorter_side(image: tf.Tensor, size, method: str = 'bicubic') -> tf.Tensor:
  """torchvision ``Resize(size)``: shorter side -> size, longer side -> int(size * long / short)."""
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.int64), tf.cast(shape[1], tf.int64)
  size = tf.cast(size, tf.int64)
  new_h = tf.where(h <= w, size, (size * h) // w)
  new_w = tf.where(h <= w, (size * w) // h, size)
  return _resize(image, new_h, new_w, method)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """torchvision ``CenterCrop(size)`` for images at least `size` on both sides."""
  shape = tf.shape(image)
  top = tf.cast(tf.round(tf.cast(shape[0] - size, tf.float32) / 2.0), tf.int32)
  left = tf.cast(tf.round(tf.cast(shape[1] - size, tf.float32) / 2.0), tf.int32)
  out = tf.slice(image, tf.stack([top, left, 0]), [size, size, -1])
  return tf.ensure_shape(out, [size, size, None])


def eval_resize_crop(image: tf.Tensor, image_size: int, crop_pct: float = 0.875) -> tf.Tensor:
  """Evaluation geometry (ConvNeXt V2 ``build_transform(is_train=False)``).

  image_size < 384: resize the shorter side to int(image_size / crop_pct)
  (bicubic), then center-crop image_size x image_size.
  image_size >= 384: squash-resize to image_size x image_size, no crop.
  uint8 [H, W, 3] -> uint8 [image_size, image_size, 3].
  """
  if not 0.0 < crop_pct <= 1.0:
    raise ValueError(f'crop_pct must be in (0, 1], got {crop_pct}')
  if image_size >= 384:
    out = _resize(image, image_size, image_size, 'bicubic')
    return tf.ensure_shape(out, [image_size, image_size, None])
  scale_size = max(int(image_size / crop_pct), image_size)
  return center_crop(resize_shorter_side(image, scale_size), image_size)


# --------------------------------------------------------------------------
# Random erasing (timm RandomErasing, mode='pixel', max_count=1)
# --------------------------------------------------------------------------

def random_erasing(image: tf.Tensor, seed: tf.Tensor, probability: float = 0.25,
                   min_area: float = 0.02, max_area: float = 1 / 3,
                   log_aspect: tuple[float, float] = (math.log(0.3), math.log(1 / 0.3)),
                   attempts: int = 10) -> tf.Tensor:
  """Erases one random box with per-pixel N(0, 1) noise (normalized space).

  float32 [H, W, C] -> float32 [H, W, C]. With probability `probability`;
  box area ~ U(min_area, max_area) * H * W, log aspect ~ U(log_aspect); the
  first of `attempts` boxes that fits (h < H and w < W) is used, like timm.
  """
  shape = tf.shape(image)
  height = tf.cast(shape[0], tf.float32)
  width = tf.cast(shape[1], tf.float32)
  s = split_seed(seed, 5)
  target = uniform(s[0], [attempts], min_area, max_area) * height * width
  aspect = tf.exp(uniform(s[1], [attempts], log_aspect[0], log_aspect[1]))
  h = tf.round(tf.sqrt(target * aspect))
  w = tf.round(tf.sqrt(target / aspect))
  valid = (w < width) & (h < height)
  first = tf.argmax(tf.cast(valid, tf.int32))
  h, w = tf.gather(h, first), tf.gather(w, first)
  apply = (uniform(s[2]) < probability) & tf.reduce_any(valid)
  u = uniform(s[3], [2])
  top = tf.minimum(tf.floor(u[0] * (height - h + 1)), height - h)
  left = tf.minimum(tf.floor(u[1] * (width - w + 1)), width - w)
  rows = tf.range(height)[:, None]  # [H, 1]
  cols = tf.range(width)[None, :]  # [1, W]
  box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w) & apply  # [H, W]
  noise = tf.random.stateless_normal(shape, s[4], dtype=image.dtype)
  return tf.where(box[:, :, None], noise, image)
