"""Image ops in TensorFlow with *stateless* randomness: crops, resizes, flips, normalisation,
random erasing.

Every random op takes an explicit ``seed`` (an int32/int64 tensor of shape [2]) and draws its
randomness with ``tf.random.stateless_*``. The input pipeline (``data/pipeline.py``) derives that
seed from (run seed, epoch, position in the epoch), so an augmented example is a pure function of
those and does not depend on tf.data parallelism, prefetching or the resume step.

Images flow through the ops as ``uint8`` tensors of shape [H, W, 3] (like PIL images in the timm
/ torchvision recipes this mirrors) and leave the host as uint8; normalisation and random erasing
happen on the accelerator (``data/on_device.py``). The recipes that chain these ops are in
``data/transforms.py``; RandAugment is in ``data/randaugment.py``.

Bicubic resizes are PIL's, bit for bit (``data/resample.py``). Known difference from the
PyTorch/PIL reference: the random streams are Philox (TF) rather than torch/python ``random``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from data import resample

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


def _resize(image: tf.Tensor, height, width) -> tf.Tensor:
  """PIL's bicubic resize of a uint8 [H, W, C] image to uint8 [height, width, C] (antialiased
  when it shrinks), computed by ``data/resample.py`` outside the graph: TF's antialiased resize
  only approximates PIL's filter and costs more than decoding the JPEG. The kernel releases the
  GIL, so tf.data's threads run it in parallel."""
  out = tf.numpy_function(
    resample.resize_bicubic,
    [image, tf.cast(height, tf.int64), tf.cast(width, tf.int64)],
    tf.uint8,
    stateful=False,
  )
  return tf.ensure_shape(out, [None, None, image.shape[-1]])


# --------------------------------------------------------------------------
# Crops, resizes, flips
# --------------------------------------------------------------------------


def crop_window(
  shape: tf.Tensor,
  seed: tf.Tensor,
  scale: tuple[float, float] = (0.08, 1.0),
  ratio: tuple[float, float] = (3 / 4, 4 / 3),
  attempts: int = 10,
) -> tf.Tensor:
  """torchvision ``RandomResizedCrop``'s window of an image of `shape` [H, W, ...]: int32
  [top, left, height, width].

  Same parameter sampling as torchvision: up to `attempts` tries of (area fraction ~ U(scale),
  log aspect ~ U(log ratio)); the first crop that fits is used, otherwise a central crop with
  the aspect ratio clamped to `ratio`. The tries are drawn all at once (vectorised) and the
  first valid one is selected, which is distributionally identical to the sequential loop. It
  needs only the image's shape, so a JPEG's window is drawn before it is decoded
  (`decode_crop`).
  """
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
  return tf.cast(tf.stack([top, left, crop_h, crop_w]), tf.int32)


def decode_crop(
  data: tf.Tensor, window: Callable[[tf.Tensor], tf.Tensor], channels: int = 3
) -> tf.Tensor:
  """Decodes the window `window(shape)` of an encoded image: uint8 [h, w, channels].

  A JPEG decodes only the window (its shape read from the header first); other formats (PNG,
  GIF, BMP, WebP, .npy) decode whole (`decode`) and are cropped. Unreadable bytes raise, at
  decode time."""

  def jpeg():
    return _decode_jpeg(data, channels, window(tf.io.extract_jpeg_shape(data)))

  def other():
    image = decode(data, channels)
    return crop(image, window(tf.shape(image)))

  if channels not in (1, 3):
    return other()
  return tf.cond(tf.io.is_jpeg(data), jpeg, other)


NPY_MAGIC = b"\x93NUMPY"


def _decode_jpeg(data: tf.Tensor, channels: int, window: tf.Tensor | None = None) -> tf.Tensor:
  """A JPEG (or its window) as uint8 [h, w, channels]; a CMYK JPEG to one channel goes through
  RGB (libjpeg converts CMYK to RGB only), rounded ITU-R 601 luma as tf.image computes it."""

  def direct(n):
    if window is None:
      return tf.io.decode_jpeg(data, channels=n)
    return tf.io.decode_and_crop_jpeg(data, window, channels=n)

  if channels != 1:
    return direct(channels)

  def via_rgb():
    grey = tf.image.rgb_to_grayscale(tf.cast(direct(3), tf.float32))
    return tf.cast(tf.clip_by_value(tf.round(grey), 0, 255), tf.uint8)

  return tf.cond(tf.io.extract_jpeg_shape(data)[2] == 4, via_rgb, lambda: direct(1))


def decode(data: tf.Tensor, channels: int = 3) -> tf.Tensor:
  """The whole image of a file's bytes as uint8 [h, w, channels].

  Image files (1 or 3 channels): JPEG (CMYK too), PNG (8 and 16 bit), BMP, GIF, WebP; greyscale,
  RGB and RGBA are converted to `channels` as TensorFlow's decoders do (alpha dropped, grey
  repeated, colour and CMYK to luma). A `.npy` array (H, W, C), any C, must have C == channels
  (else it fails, as a corrupt image does); see `npy_pixels` for its dtypes."""

  def image():
    out = tf.cond(
      tf.io.is_jpeg(data),
      lambda: _decode_jpeg(data, channels),
      lambda: tf.io.decode_image(data, channels=channels, expand_animations=False, dtype=tf.uint8),
    )
    return tf.ensure_shape(out, [None, None, channels])

  def array():
    out = tf.numpy_function(npy_pixels, [data, channels], tf.uint8, stateful=False)
    return tf.ensure_shape(out, [None, None, channels])

  if channels not in (1, 3):
    return array()
  return tf.cond(tf.strings.substr(data, 0, len(NPY_MAGIC)) == NPY_MAGIC, array, image)


def npy_pixels(data: bytes, channels) -> np.ndarray:
  """A .npy file's bytes -> uint8 [H, W, channels]. (H, W, C) with C == channels ((H, W) when
  channels is 1); uint8 as it is, uint16 scaled by 255 / 65535 (as 16-bit PNGs are), float32 in
  [0, 1] scaled by 255 (clipped). Anything else raises ValueError (a corrupt image)."""
  array = np.load(io.BytesIO(data), allow_pickle=False)
  if array.ndim == 2:
    array = array[:, :, None]
  if array.ndim != 3 or array.shape[-1] != int(channels):
    raise ValueError(f"a .npy image of shape {array.shape}, expected (H, W, {int(channels)})")
  if array.dtype == np.uint8:
    return np.ascontiguousarray(array)
  if array.dtype == np.uint16:
    return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
  if array.dtype == np.float32:
    return np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
  raise ValueError(f"a .npy image of dtype {array.dtype}: expected uint8, uint16 or float32")


def crop(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
  """The [top, left, height, width] window of an image [H, W, C]."""
  return tf.slice(image, tf.stack([window[0], window[1], 0]), tf.stack([window[2], window[3], -1]))


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """PIL's bicubic resize to uint8 [size, size, C]: RandomResizedCrop's second half."""
  return tf.ensure_shape(_resize(image, size, size), [size, size, None])


def random_horizontal_flip(image: tf.Tensor, seed: tf.Tensor, prob: float = 0.5) -> tf.Tensor:
  """Mirrors the image left-right with probability `prob`."""
  flip = uniform(seed) < prob
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def resize_shorter_side(image: tf.Tensor, size) -> tf.Tensor:
  """torchvision ``Resize(size)``: shorter side -> size, longer side -> int(size * long / short)."""
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.int64), tf.cast(shape[1], tf.int64)
  size = tf.cast(size, tf.int64)
  new_h = tf.where(h <= w, size, (size * h) // w)
  new_w = tf.where(h <= w, (size * w) // h, size)
  return _resize(image, new_h, new_w)


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
    raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
  if image_size >= 384:
    out = _resize(image, image_size, image_size)
    return tf.ensure_shape(out, [image_size, image_size, None])
  scale_size = max(int(image_size / crop_pct), image_size)
  return center_crop(resize_shorter_side(image, scale_size), image_size)
