"""The per-example transforms of each recipe, as the input pipeline applies them.

* ``'pretrain'`` (FCMAE): RandomResizedCrop(scale=(0.2, 1), ratio=(3/4, 4/3), bicubic) ->
  horizontal flip -> normalize.
* ``'finetune'`` (ConvNeXt V2 finetuning, timm ``create_transform``): RandomResizedCrop(scale=
  (0.08, 1)) -> flip -> RandAugment (``rand-m9-mstd0.5-inc1``) -> normalize ->
  RandomErasing(p=0.25, 'pixel').
* ``'none'``: deterministic eval-style resize + center crop -> normalize.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import tensorflow as tf

from data.augment import (eval_resize_crop, normalize, random_erasing,
                          random_horizontal_flip, random_resized_crop, split_seed)
from data.randaugment import parse_rand_augment, rand_augment

AUGMENT_KINDS = ('pretrain', 'finetune', 'none')

# A transform maps (uint8 image [H, W, 3], seed [2]) -> float32 [S, S, 3].
Transform = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


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
    s = split_seed(seed, 4)
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


_IMAGE_SPEC = tf.TensorSpec([None, None, 3], tf.uint8)
_SEED_SPEC = tf.TensorSpec([2], tf.int64)


def _freeze(value: Any) -> Any:
  """Hashable version of an augment_options value (lists -> tuples)."""
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


def compiled_train_transform(augment: str, image_size: int, options: dict | None = None) -> Any:
  """`build_train_transform` as a tf.function(uint8 [H, W, 3], seed [2]) -> float32 [S, S, 3],
  traced once per process and set of arguments (tracing RandAugment's 2 x 15 branches takes
  seconds). Bad options raise here, not inside a tf.data thread."""
  resolve_options(augment, options)
  frozen = tuple(sorted((k, _freeze(v)) for k, v in (options or {}).items()))
  return _compiled_train_transform(augment, image_size, frozen)


@functools.lru_cache(maxsize=64)
def _compiled_train_transform(augment: str, image_size: int, options: tuple) -> Any:
  fn = build_train_transform(augment, image_size, dict(options))
  return tf.function(fn, input_signature=[_IMAGE_SPEC, _SEED_SPEC], autograph=False)


@functools.lru_cache(maxsize=64)
def compiled_eval_transform(image_size: int, crop_pct: float) -> Any:
  """tf.function(uint8 [H, W, 3]) -> float32 [S, S, 3] normalized eval crop."""
  fn = lambda image: normalize(eval_resize_crop(image, image_size, crop_pct))
  return tf.function(fn, input_signature=[_IMAGE_SPEC], autograph=False)
