"""The per-example transforms of each recipe, as the input pipeline applies them.

* ``'pretrain'`` (FCMAE): RandomResizedCrop(scale=(0.2, 1), ratio=(3/4, 4/3), bicubic) ->
  horizontal flip.
* ``'finetune'`` (ConvNeXt V2 finetuning, timm ``create_transform``): RandomResizedCrop(scale=
  (0.08, 1)) -> flip -> RandAugment (``rand-m9-mstd0.5-inc1``). Random erasing follows on the
  device (``data/on_device.py``), where the pixels are normalized.
* ``'none'`` and evaluation: resize the shorter side + center crop.

Each transform has two parts, which the pipeline runs as two tf.data maps:

* ``decode(payload, seed)``: the encoded bytes of an image (or, for the demo data, its pixels)
  -> the uint8 pixels of the crop window. Of a JPEG only the window is decoded; the window is
  drawn from the shape in the JPEG's header, from the same distribution as torchvision's
  RandomResizedCrop. A corrupt image fails here, and the pipeline drops it and counts it.
* ``finish(image, seed)``: the crop -> uint8 [S, S, 3] (resize, flip, RandAugment). An error
  here is a bug, and raises.

Both parts are tf.functions traced once per process and set of arguments (tracing RandAugment's
2 x 15 branches takes seconds). Everything leaves the host as uint8.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import tensorflow as tf

from data.augment import (
  crop,
  crop_window,
  decode,
  decode_crop,
  eval_resize_crop,
  random_horizontal_flip,
  resize,
  split_seed,
)
from data.randaugment import parse_rand_augment, rand_augment

AUGMENT_KINDS = ("pretrain", "finetune", "none")

_OPTION_DEFAULTS = {
  "pretrain": {"scale": (0.2, 1.0), "ratio": (3 / 4, 4 / 3), "hflip": 0.5, "randaugment": ""},
  "finetune": {
    "scale": (0.08, 1.0),
    "ratio": (3 / 4, 4 / 3),
    "hflip": 0.5,
    "randaugment": "rand-m9-mstd0.5-inc1",
  },
  "none": {"crop_pct": 0.875},
}

_SEED_SPEC = tf.TensorSpec([2], tf.int64)
_BYTES_SPEC = tf.TensorSpec([], tf.string)


@dataclasses.dataclass(frozen=True)
class Transform:
  """decode: (payload, seed [2]) -> uint8 [h, w, C]; finish: (image, seed [2]) -> uint8 [S, S, C]."""

  decode: Any
  finish: Any


def resolve_options(augment: str, options: dict | None) -> dict:
  """Merges user `options` over the recipe defaults; rejects unknown keys (typos)."""
  if augment not in _OPTION_DEFAULTS:
    raise ValueError(f"augment must be one of {AUGMENT_KINDS}, got {augment!r}")
  merged = dict(_OPTION_DEFAULTS[augment])
  unknown = set(options or {}) - set(merged)
  if unknown:
    raise ValueError(
      f"unknown augment_options {sorted(unknown)} for augment={augment!r}; "
      f"allowed: {sorted(merged)}"
    )
  merged.update(options or {})
  return merged


def _functions(decode_fn, finish_fn, encoded: bool, channels: int) -> Transform:
  pixels = tf.TensorSpec([None, None, channels], tf.uint8)
  payload = _BYTES_SPEC if encoded else pixels
  return Transform(
    decode=tf.function(decode_fn, input_signature=[payload, _SEED_SPEC], autograph=False),
    finish=tf.function(finish_fn, input_signature=[pixels, _SEED_SPEC], autograph=False),
  )


def train_transform(
  augment: str,
  image_size: int,
  options: dict | None = None,
  *,
  encoded: bool = True,
  channels: int = 3,
) -> Transform:
  """The transform of a recipe; encoded: payloads are image files' bytes (else uint8 pixels),
  decoded to `channels` channels (data/augment.py's decode).

  options: 'scale', 'ratio', 'hflip', 'randaugment' (timm spec or '') for the random recipes;
  'crop_pct' for 'none'. Bad options raise here, not inside a tf.data thread."""
  opts = resolve_options(augment, options)
  frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in opts.items()))
  return _train_transform(augment, image_size, frozen, encoded, channels)


@functools.lru_cache(maxsize=64)
def _train_transform(
  augment: str, image_size: int, options: tuple, encoded: bool, channels: int
) -> Transform:
  opts = dict(options)
  if augment == "none":
    return eval_transform(image_size, float(opts["crop_pct"]), encoded=encoded, channels=channels)
  ra_config = parse_rand_augment(opts["randaugment"]) if opts["randaugment"] else None
  scale, ratio, hflip = tuple(opts["scale"]), tuple(opts["ratio"]), float(opts["hflip"])

  def decode(payload, seed):
    window = lambda shape: crop_window(shape, split_seed(seed, 4)[0], scale, ratio)
    if encoded:
      return decode_crop(payload, window, channels)
    return crop(payload, window(tf.shape(payload)))

  def finish(image, seed):
    s = split_seed(seed, 4)
    image = resize(image, image_size)
    if hflip > 0:
      image = random_horizontal_flip(image, s[1], hflip)
    if ra_config is not None:
      image = rand_augment(image, s[2], ra_config)
    return image

  return _functions(decode, finish, encoded, channels)


@functools.lru_cache(maxsize=64)
def eval_transform(
  image_size: int, crop_pct: float, *, encoded: bool = True, channels: int = 3
) -> Transform:
  """Evaluation: the whole image decoded, then resize + center crop (the seed is unused)."""
  return _functions(
    lambda payload, seed: decode(payload, channels) if encoded else payload,
    lambda image, seed: eval_resize_crop(image, image_size, crop_pct),
    encoded,
    channels,
  )
