"""RandAugment as timm implements it (``rand-m9-mstd0.5-inc1`` in the finetuning recipe), in
TensorFlow ops with stateless randomness.

uint8 [H, W, 3] in, uint8 out. Geometric ops use bilinear instead of PIL's bicubic resampling.
The affine warp, Sharpness and Equalize, which cost the most in TensorFlow ops, run compiled
(``data/randaugment_kernels.py``).
"""

from __future__ import annotations

import dataclasses
import math
import re

import tensorflow as tf

from data import randaugment_kernels
from data.augment import split_seed, to_uint8, uniform
from data.info import IMAGENET_MEAN

# timm's RandAugment fill colour: round(255 * mean) = (124, 116, 104).
IMAGENET_MEAN_PIXEL = tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN)


def _compiled(kernel, image: tf.Tensor, *args) -> tf.Tensor:
  """uint8 [H, W, C] -> uint8 [H, W, C] by a kernel of ``data/randaugment_kernels.py``, run in
  the graph through tf.numpy_function (the kernels release the GIL)."""
  out = tf.numpy_function(kernel, [image, *args], tf.uint8, stateful=False)
  return tf.ensure_shape(out, image.shape)


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
  return _compiled(randaugment_kernels.equalize, image)


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
  return _compiled(randaugment_kernels.sharpness, image, tf.cast(factor, tf.float32))


def affine_transform(image: tf.Tensor, transform, fill=IMAGENET_MEAN_PIXEL) -> tf.Tensor:
  """Applies an output->input affine map [a0, a1, a2, b0, b1, b2] (PIL convention).

  Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2) with bilinear
  interpolation (TensorFlow's ImageProjectiveTransformV3); what falls outside the image blends
  into the per-channel `fill` colour by its uncovered fraction.
  """
  transform = tf.cast(tf.reshape(transform, [6]), tf.float32)
  return _compiled(randaugment_kernels.affine, image, transform, tf.constant(fill, tf.float32))


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

  num_layers: int = 2  # 'n'
  magnitude: float = 10.0  # 'm' (timm's default when no 'm' is given)
  magnitude_std: float = 0.0  # 'mstd' (inf = uniform in [0, m])
  magnitude_max: float = 10.0  # 'mmax'
  increasing: bool = False  # 'inc'
  prob: float = 0.5  # 'p': probability of applying each chosen op
  translate_pct: float = 0.45  # timm hparam for TranslateXRel / TranslateYRel


def parse_rand_augment(config: str) -> RandAugmentConfig:
  """Parses a timm RandAugment spec ('rand-m9-mstd0.5-inc1', 'rand-n2-m7', ...)."""
  parts = config.split("-")
  if parts[0] != "rand":
    raise ValueError(f"RandAugment spec must start with 'rand', got {config!r}")
  kwargs = {}
  keys = {
    "n": ("num_layers", int),
    "m": ("magnitude", float),
    "mstd": ("magnitude_std", float),
    "mmax": ("magnitude_max", float),
    "inc": ("increasing", lambda v: bool(int(v))),
    "p": ("prob", float),
  }
  for part in parts[1:]:
    match = re.fullmatch(r"([a-z]+)(inf|[-+]?[0-9.]+)", part)
    if not match or match.group(1) not in keys:
      raise ValueError(f"unknown RandAugment option {part!r} in {config!r}")
    field, conv = keys[match.group(1)]
    kwargs[field] = conv(match.group(2))
  return RandAugmentConfig(**kwargs)


# Op names, in timm's order (_RAND_TRANSFORMS / _RAND_INCREASING_TRANSFORMS).
RAND_AUGMENT_OPS = (
  "AutoContrast",
  "Equalize",
  "Invert",
  "Rotate",
  "Posterize",
  "Solarize",
  "SolarizeAdd",
  "Color",
  "Contrast",
  "Brightness",
  "Sharpness",
  "ShearX",
  "ShearY",
  "TranslateXRel",
  "TranslateYRel",
)


def apply_rand_augment_op(
  name: str,
  image: tf.Tensor,
  magnitude,
  sign,
  config: RandAugmentConfig = RandAugmentConfig(),
  fill=IMAGENET_MEAN_PIXEL,
) -> tf.Tensor:
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
  if name == "AutoContrast":
    return auto_contrast(image)
  if name == "Equalize":
    return equalize(image)
  if name == "Invert":
    return invert(image)
  if name == "Rotate":
    return rotate(image, sign * level * 30.0, fill)
  if name == "Posterize":
    return posterize(image, posterize_bits)
  if name == "Solarize":
    return solarize(image, solarize_thresh)
  if name == "SolarizeAdd":
    return solarize_add(image, tf.cast(level * 110, tf.int32))
  if name == "Color":
    return color(image, enhance)
  if name == "Contrast":
    return contrast(image, enhance)
  if name == "Brightness":
    return brightness(image, enhance)
  if name == "Sharpness":
    return sharpness(image, enhance)
  if name == "ShearX":
    return shear_x(image, sign * level * 0.3, fill)
  if name == "ShearY":
    return shear_y(image, sign * level * 0.3, fill)
  if name == "TranslateXRel":
    return translate_x(image, sign * level * config.translate_pct * shape[1], fill)
  if name == "TranslateYRel":
    return translate_y(image, sign * level * config.translate_pct * shape[0], fill)
  raise ValueError(f"unknown RandAugment op {name!r}")


def rand_augment(
  image: tf.Tensor, seed: tf.Tensor, config: RandAugmentConfig | str, fill=IMAGENET_MEAN_PIXEL
) -> tf.Tensor:
  """timm ``RandAugment``: `num_layers` ops drawn uniformly with replacement.

  Each chosen op is applied with probability `config.prob`, at magnitude
  ~ N(m, mstd) clipped to [0, mmax], with a random sign for signed ops.
  uint8 [H, W, 3] -> uint8 [H, W, 3].
  """
  if isinstance(config, str):
    config = parse_rand_augment(config)
  layer_seeds = split_seed(seed, max(config.num_layers, 1))
  for layer in range(config.num_layers):
    s = split_seed(layer_seeds[layer], 4)
    op_index = tf.random.stateless_uniform([], s[0], 0, len(RAND_AUGMENT_OPS), dtype=tf.int32)
    apply = uniform(s[1]) < config.prob
    magnitude = tf.constant(config.magnitude, tf.float32)
    if config.magnitude_std == float("inf"):
      magnitude = uniform(s[2], [], 0.0, config.magnitude)
    elif config.magnitude_std > 0:
      magnitude = magnitude + config.magnitude_std * tf.random.stateless_normal([], s[2])
    magnitude = tf.clip_by_value(magnitude, 0.0, config.magnitude_max)
    sign = tf.where(uniform(s[3]) > 0.5, -1.0, 1.0)

    def branch(name, img=image, mag=magnitude, sgn=sign):
      return lambda: apply_rand_augment_op(name, img, mag, sgn, config, fill)

    branches = [branch(name) for name in RAND_AUGMENT_OPS]
    current = image
    image = tf.cond(apply, lambda: tf.switch_case(op_index, branches), lambda: current)
    image = tf.ensure_shape(image, current.shape)
  return image
