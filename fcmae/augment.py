"""Image augmentation ops in TensorFlow with *stateless* randomness.

Every random op takes an explicit ``seed`` (an int32/int64 tensor of shape [2])
and draws its randomness with ``tf.random.stateless_*``. The input pipeline
(``fcmae.data``) derives that seed from (run seed, process, epoch,
position-in-epoch), so an augmented example is a pure function of those and
does not depend on tf.data parallelism, prefetching or the resume step.

Images flow through the ops as ``uint8`` tensors of shape [H, W, 3] (like PIL
images in the timm / torchvision recipes this mirrors) until ``normalize``,
which produces float32 in ImageNet-normalized space; random erasing works in
that normalized space, as in timm.

Recipes (built by ``build_train_transform``):

* ``'pretrain'`` (FCMAE): RandomResizedCrop(scale=(0.2, 1), ratio=(3/4, 4/3),
  bicubic) -> horizontal flip -> normalize.
* ``'finetune'`` (ConvNeXt V2 fine-tuning, timm ``create_transform``):
  RandomResizedCrop(scale=(0.08, 1)) -> flip -> RandAugment
  (``rand-m9-mstd0.5-inc1``) -> normalize -> RandomErasing(p=0.25, 'pixel').
* ``'none'``: deterministic eval-style resize + center crop -> normalize.

Known differences from the PyTorch/PIL reference: geometric RandAugment ops use
bilinear instead of bicubic resampling (the TF projective-transform kernel has
no bicubic mode); bicubic resizes use ``tf.image.resize(..., antialias=True)``,
which approximates (not bit-matches) PIL's filter; the random streams are
Philox (TF) rather than torch/python ``random``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Sequence

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's RandAugment fill colour: round(255 * mean) = (124, 116, 104).
IMAGENET_MEAN_PIXEL = tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN)

AUGMENT_KINDS = ('pretrain', 'finetune', 'none')

# A transform maps (uint8 image [H, W, 3], seed [2]) -> float32 [S, S, 3].
Transform = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def _split(seed: tf.Tensor, num: int) -> tf.Tensor:
  """Derives `num` independent stateless seeds ([num, 2]) from `seed`."""
  return tf.random.experimental.stateless_split(seed, num=num)


def _uniform(seed, shape=(), minval=0.0, maxval=1.0):
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
  s = _split(seed, 3)
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  target_area = area * _uniform(s[0], [attempts], scale[0], scale[1])  # [attempts]
  aspect = tf.exp(_uniform(s[1], [attempts], log_ratio[0], log_ratio[1]))  # [attempts]
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
  u = _uniform(s[2], [2])
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
  flip = _uniform(seed) < prob
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
# RandAugment (timm semantics, tf ops only)
# --------------------------------------------------------------------------

def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor) -> tf.Tensor:
  """PIL ``Image.blend(degenerate, image, factor)``: degenerate + factor * (image - degenerate)."""
  d = tf.cast(degenerate, tf.float32)
  return to_uint8(d + factor * (tf.cast(image, tf.float32) - d))


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] -> float32 [H, W, 1] luma, PIL 'L' weights."""
  return tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
  """PIL ``ImageOps.autocontrast``: per channel, stretch [min, max] to [0, 255]."""
  x = tf.cast(image, tf.float32)
  lo = tf.reduce_min(x, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(x, axis=[0, 1], keepdims=True)
  scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
  offset = tf.where(hi > lo, lo, 0.0)
  return to_uint8((x - offset) * scale)


def equalize(image: tf.Tensor) -> tf.Tensor:
  """PIL ``ImageOps.equalize``: per-channel histogram equalisation."""

  def channel(c):
    im = tf.cast(image[:, :, c], tf.int32)
    hist = tf.math.bincount(im, minlength=256, maxlength=256, dtype=tf.int32)  # [256]
    nonzero = tf.boolean_mask(hist, hist > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    safe_step = tf.maximum(step, 1)
    lut = (tf.cumsum(hist) + safe_step // 2) // safe_step
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    return tf.where(step == 0, im, tf.gather(lut, im))

  return tf.cast(tf.stack([channel(c) for c in range(3)], axis=-1), tf.uint8)


def invert(image: tf.Tensor) -> tf.Tensor:
  return 255 - image


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
  """Keeps the `bits` most significant bits of each channel (bits in [0, 8])."""
  shift = 8 - tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
  mask = 255 - (tf.bitwise.left_shift(1, shift) - 1)  # e.g. bits=1 -> 0b10000000, bits=0 -> 0
  return tf.cast(tf.bitwise.bitwise_and(tf.cast(image, tf.int32), mask), tf.uint8)


def solarize(image: tf.Tensor, threshold) -> tf.Tensor:
  """Inverts pixels >= threshold."""
  x = tf.cast(image, tf.int32)
  return tf.cast(tf.where(x >= tf.cast(threshold, tf.int32), 255 - x, x), tf.uint8)


def solarize_add(image: tf.Tensor, addition, threshold=128) -> tf.Tensor:
  """Adds `addition` to pixels below threshold (clipped at 255)."""
  x = tf.cast(image, tf.int32)
  added = tf.minimum(x + tf.cast(addition, tf.int32), 255)
  return tf.cast(tf.where(x < threshold, added, x), tf.uint8)


def color(image: tf.Tensor, factor) -> tf.Tensor:
  """PIL ``ImageEnhance.Color`` (saturation): blend with the grayscale image."""
  gray = tf.image.grayscale_to_rgb(_grayscale(image))
  return _blend(tf.round(gray), image, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
  """PIL ``ImageEnhance.Contrast``: blend with the mean grayscale level."""
  mean = tf.floor(tf.reduce_mean(_grayscale(image)) + 0.5)
  return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
  """PIL ``ImageEnhance.Brightness``: blend with black."""
  return _blend(tf.zeros_like(image, tf.float32), image, factor)


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
  """PIL ``ImageEnhance.Sharpness``: blend with the SMOOTH-filtered image (borders kept)."""
  x = tf.cast(image, tf.float32)[None]  # [1, H, W, 3]
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])  # [3, 3, 3, 1]
  smooth = tf.round(tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], padding='VALID'))[0]
  smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])  # [H, W, 3]
  interior = tf.pad(tf.ones_like(smooth[1:-1, 1:-1]), [[1, 1], [1, 1], [0, 0]]) > 0
  degenerate = tf.where(interior, smooth, x[0])
  return _blend(degenerate, image, factor)


def affine_transform(image: tf.Tensor, transform, fill=IMAGENET_MEAN_PIXEL) -> tf.Tensor:
  """Applies an output->input affine map [a0, a1, a2, b0, b1, b2] (PIL convention).

  Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2) with
  bilinear interpolation; outside pixels get the per-channel `fill` colour
  (done with an extra coverage channel, since the TF kernel only fills a
  scalar).
  """
  x = tf.cast(image, tf.float32)
  x = tf.concat([x, tf.ones_like(x[..., :1])], axis=-1)[None]  # [1, H, W, 4]
  t = tf.concat([tf.cast(tf.reshape(transform, [6]), tf.float32), tf.zeros([2])], 0)[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=x, transforms=t, output_shape=tf.shape(image)[:2], fill_value=0.0,
      interpolation='BILINEAR', fill_mode='CONSTANT')[0]
  rgb, coverage = out[..., :3], out[..., 3:]
  return to_uint8(rgb + (1.0 - coverage) * tf.constant(fill, tf.float32))


def rotate(image: tf.Tensor, degrees, fill=IMAGENET_MEAN_PIXEL) -> tf.Tensor:
  """PIL ``Image.rotate(degrees)``: counter-clockwise about the image centre."""
  theta = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  shape = tf.cast(tf.shape(image), tf.float32)
  cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
  cos, sin = tf.cos(theta), tf.sin(theta)
  a0, a1, b0, b1 = cos, -sin, sin, cos
  a2 = cx - (a0 * cx + a1 * cy)
  b2 = cy - (b0 * cx + b1 * cy)
  return affine_transform(image, tf.stack([a0, a1, a2, b0, b1, b2]), fill)


def shear_x(image, factor, fill=IMAGENET_MEAN_PIXEL):
  f = tf.cast(factor, tf.float32)
  return affine_transform(image, tf.stack([1.0, f, 0.0, 0.0, 1.0, 0.0]), fill)


def shear_y(image, factor, fill=IMAGENET_MEAN_PIXEL):
  f = tf.cast(factor, tf.float32)
  return affine_transform(image, tf.stack([1.0, 0.0, 0.0, f, 1.0, 0.0]), fill)


def translate_x(image, pixels, fill=IMAGENET_MEAN_PIXEL):
  p = tf.cast(pixels, tf.float32)
  return affine_transform(image, tf.stack([1.0, 0.0, p, 0.0, 1.0, 0.0]), fill)


def translate_y(image, pixels, fill=IMAGENET_MEAN_PIXEL):
  p = tf.cast(pixels, tf.float32)
  return affine_transform(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, p]), fill)


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig:
  """Parsed timm RandAugment string, e.g. ``rand-m9-mstd0.5-inc1``."""
  num_layers: int = 2          # 'n'
  magnitude: float = 10.0      # 'm' (timm's default when no 'm' is given)
  magnitude_std: float = 0.0   # 'mstd' (inf = uniform in [0, m])
  magnitude_max: float = 10.0  # 'mmax'
  increasing: bool = False     # 'inc'
  prob: float = 0.5            # 'p': probability of applying each chosen op
  translate_pct: float = 0.45  # timm hparam for TranslateXRel / TranslateYRel


def parse_rand_augment(config: str) -> RandAugmentConfig:
  """Parses a timm RandAugment spec ('rand-m9-mstd0.5-inc1', 'rand-n2-m7', ...)."""
  parts = config.split('-')
  if parts[0] != 'rand':
    raise ValueError(f"RandAugment spec must start with 'rand', got {config!r}")
  kwargs = {}
  keys = {'n': ('num_layers', int), 'm': ('magnitude', float), 'mstd': ('magnitude_std', float),
          'mmax': ('magnitude_max', float), 'inc': ('increasing', lambda v: bool(int(v))),
          'p': ('prob', float)}
  for part in parts[1:]:
    match = re.fullmatch(r'([a-z]+)(inf|[-+]?[0-9.]+)', part)
    if not match or match.group(1) not in keys:
      raise ValueError(f'unknown RandAugment option {part!r} in {config!r}')
    field, conv = keys[match.group(1)]
    kwargs[field] = conv(match.group(2))
  return RandAugmentConfig(**kwargs)


# Op names, in timm's order (_RAND_TRANSFORMS / _RAND_INCREASING_TRANSFORMS).
RAND_AUGMENT_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize',
                    'SolarizeAdd', 'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX',
                    'ShearY', 'TranslateXRel', 'TranslateYRel')


def apply_rand_augment_op(name: str, image: tf.Tensor, magnitude, sign,
                          config: RandAugmentConfig = RandAugmentConfig(),
                          fill=IMAGENET_MEAN_PIXEL) -> tf.Tensor:
  """Applies one RandAugment op with timm's magnitude -> argument mapping.

  Args:
    name: one of RAND_AUGMENT_OPS.
    image: uint8 [H, W, 3].
    magnitude: float scalar in [0, 10] (timm's _LEVEL_DENOM = 10).
    sign: +1.0 / -1.0, timm's ``_randomly_negate`` for signed ops.
  """
  level = tf.cast(magnitude, tf.float32) / 10.0
  shape = tf.cast(tf.shape(image), tf.float32)
  if config.increasing:
    enhance = tf.maximum(0.1, 1.0 + sign * level * 0.9)
    posterize_bits = 4 - tf.cast(level * 4, tf.int32)
    solarize_thresh = 256 - tf.cast(level * 256, tf.int32)
  else:
    enhance = level * 1.8 + 0.1
    posterize_bits = tf.cast(level * 4, tf.int32)
    solarize_thresh = tf.cast(level * 256, tf.int32)
  if name == 'AutoContrast':
    return auto_contrast(image)
  if name == 'Equalize':
    return equalize(image)
  if name == 'Invert':
    return invert(image)
  if name == 'Rotate':
    return rotate(image, sign * level * 30.0, fill)
  if name == 'Posterize':
    return posterize(image, posterize_bits)
  if name == 'Solarize':
    return solarize(image, solarize_thresh)
  if name == 'SolarizeAdd':
    return solarize_add(image, tf.cast(level * 110, tf.int32))
  if name == 'Color':
    return color(image, enhance)
  if name == 'Contrast':
    return contrast(image, enhance)
  if name == 'Brightness':
    return brightness(image, enhance)
  if name == 'Sharpness':
    return sharpness(image, enhance)
  if name == 'ShearX':
    return shear_x(image, sign * level * 0.3, fill)
  if name == 'ShearY':
    return shear_y(image, sign * level * 0.3, fill)
  if name == 'TranslateXRel':
    return translate_x(image, sign * level * config.translate_pct * shape[1], fill)
  if name == 'TranslateYRel':
    return translate_y(image, sign * level * config.translate_pct * shape[0], fill)
  raise ValueError(f'unknown RandAugment op {name!r}')


def rand_augment(image: tf.Tensor, seed: tf.Tensor, config: RandAugmentConfig | str,
                 fill=IMAGENET_MEAN_PIXEL) -> tf.Tensor:
  """timm ``RandAugment``: `num_layers` ops drawn uniformly with replacement.

  Each chosen op is applied with probability `config.prob`, at magnitude
  ~ N(m, mstd) clipped to [0, mmax], with a random sign for signed ops.
  uint8 [H, W, 3] -> uint8 [H, W, 3].
  """
  if isinstance(config, str):
    config = parse_rand_augment(config)
  layer_seeds = _split(seed, max(config.num_layers, 1))
  for layer in range(config.num_layers):
    s = _split(layer_seeds[layer], 4)
    op_index = tf.random.stateless_uniform([], s[0], 0, len(RAND_AUGMENT_OPS), dtype=tf.int32)
    apply = _uniform(s[1]) < config.prob
    magnitude = tf.constant(config.magnitude, tf.float32)
    if config.magnitude_std == float('inf'):
      magnitude = _uniform(s[2], [], 0.0, config.magnitude)
    elif config.magnitude_std > 0:
      magnitude = magnitude + config.magnitude_std * tf.random.stateless_normal([], s[2])
    magnitude = tf.clip_by_value(magnitude, 0.0, config.magnitude_max)
    sign = tf.where(_uniform(s[3]) > 0.5, -1.0, 1.0)

    def branch(name, img=image, mag=magnitude, sgn=sign):
      return lambda: apply_rand_augment_op(name, img, mag, sgn, config, fill)

    branches = [branch(name) for name in RAND_AUGMENT_OPS]
    current = image
    image = tf.cond(apply, lambda: tf.switch_case(op_index, branches), lambda: current)
    image = tf.ensure_shape(image, current.shape)
  return image


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
  s = _split(seed, 5)
  target = _uniform(s[0], [attempts], min_area, max_area) * height * width
  aspect = tf.exp(_uniform(s[1], [attempts], log_aspect[0], log_aspect[1]))
  h = tf.round(tf.sqrt(target * aspect))
  w = tf.round(tf.sqrt(target / aspect))
  valid = (w < width) & (h < height)
  first = tf.argmax(tf.cast(valid, tf.int32))
  h, w = tf.gather(h, first), tf.gather(w, first)
  apply = (_uniform(s[2]) < probability) & tf.reduce_any(valid)
  u = _uniform(s[3], [2])
  top = tf.minimum(tf.floor(u[0] * (height - h + 1)), height - h)
  left = tf.minimum(tf.floor(u[1] * (width - w + 1)), width - w)
  rows = tf.range(height)[:, None]  # [H, 1]
  cols = tf.range(width)[None, :]  # [1, W]
  box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w) & apply  # [H, W]
  noise = tf.random.stateless_normal(shape, s[4], dtype=image.dtype)
  return tf.where(box[:, :, None], noise, image)


# --------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------

_OPTION_DEFAULTS = {
    'pretrain': {'scale': (0.2, 1.0), 'ratio': (3 / 4, 4 / 3), 'hflip': 0.5,
                 'randaugment': '', 'reprob': 0.0},
    'finetune': {'scale': (0.08, 1.0), 'ratio': (3 / 4, 4 / 3), 'hflip': 0.5,
                 'randaugment': 'rand-m9-mstd0.5-inc1', 'reprob': 0.25},
    'none': {'crop_pct': 0.875},
}


def resolve_options(augment: str, options: dict | None) -> dict:
  """Merges user `options` over the recipe defaults; rejects unknown keys (typos)."""
  if augment not in _OPTION_DEFAULTS:
    raise ValueError(f'augment must be one of {AUGMENT_KINDS}, got {augment!r}')
  merged = dict(_OPTION_DEFAULTS[augment])
  unknown = set(options or {}) - set(merged)
  if unknown:
    raise ValueError(f'unknown augment_options {sorted(unknown)} for augment={augment!r}; '
                     f'allowed: {sorted(merged)}')
  merged.update(options or {})
  return merged


def build_train_transform(augment: str, image_size: int,
                          options: dict | None = None) -> Transform:
  """Returns fn(uint8 image [H, W, 3], seed [2]) -> float32 [S, S, 3] normalized.

  augment: 'pretrain' | 'finetune' | 'none' (see module docstring).
  options: 'scale', 'ratio', 'hflip', 'randaugment' (timm spec or ''),
    'reprob' for the random recipes; 'crop_pct' for 'none'.
  """
  opts = resolve_options(augment, options)
  if augment == 'none':
    crop_pct = float(opts['crop_pct'])

    def none_fn(image, seed):
      del seed
      return normalize(eval_resize_crop(image, image_size, crop_pct))

    return none_fn

  ra_config = parse_rand_augment(opts['randaugment']) if opts['randaugment'] else None
  reprob = float(opts['reprob'])
  scale, ratio, hflip = tuple(opts['scale']), tuple(opts['ratio']), float(opts['hflip'])

  def train_fn(image, seed):
    s = _split(seed, 4)
    image = random_resized_crop(image, s[0], image_size, scale=scale, ratio=ratio)
    if hflip > 0:
      image = random_horizontal_flip(image, s[1], hflip)
    if ra_config is not None:
      image = rand_augment(image, s[2], ra_config)
    x = normalize(image)
    if reprob > 0:
      x = random_erasing(x, s[3], probability=reprob)
    return x

  return train_fn
