"""data/augment.py: crops, flips and the evaluation geometry."""

import numpy as np
import pytest
import tensorflow as tf

from data import augment
from tests.data.helpers import rand_image, seed


def test_eval_geometry():
  image = tf.constant(np.random.default_rng(0).integers(0, 256, (100, 200, 3), np.uint8))
  out = augment.eval_resize_crop(image, 32, crop_pct=0.875)  # short side -> int(32 / 0.875) = 36
  assert out.shape == (32, 32, 3) and out.dtype == tf.uint8
  resized = augment.resize_shorter_side(image, 36)
  assert resized.shape == (36, 72, 3)
  np.testing.assert_array_equal(out.numpy(), resized.numpy()[2:34, 20:52])
  big = augment.eval_resize_crop(image, 384)  # >= 384: squash, no crop
  assert big.shape == (384, 384, 3)


@pytest.mark.parametrize("shape", [(50, 80), (7, 5), (300, 10), (10, 300), (64, 64)])
def test_crop_windows_lie_inside_the_image_and_resize_to_the_size(shape):
  image = rand_image(*shape)
  for i in range(5):
    top, left, height, width = augment.crop_window(tf.shape(image), seed(i), (0.2, 1.0)).numpy()
    assert 0 <= top and top + height <= shape[0] and 0 <= left and left + width <= shape[1]
    window = tf.constant([top, left, height, width])
    out = augment.resize(augment.crop(image, window), 24)
    assert out.shape == (24, 24, 3) and out.dtype == tf.uint8


def test_crop_window_whole_image_and_central_fallback():
  square = tf.shape(rand_image(40, 40))
  full = augment.crop_window(square, seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
  assert full.numpy().tolist() == [0, 0, 40, 40]
  # 300x10 fits no crop with ratio in [3/4, 4/3] and >= 8% area: torchvision's central
  # fallback, height round(10 / (3/4)) = 13.
  tall = augment.crop_window(tf.constant([300, 10, 3]), seed(1))
  assert tall.numpy().tolist() == [143, 0, 13, 10]
  # Different seeds give different windows.
  windows = {tuple(augment.crop_window(square, seed(i)).numpy()) for i in range(6)}
  assert len(windows) == 6


def test_horizontal_flip_flips_some():
  image = rand_image(6, 9)
  flipped = 0
  for i in range(20):
    out = augment.random_horizontal_flip(image, seed(i)).numpy()
    if np.array_equal(out, image.numpy()[:, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out, image.numpy())
  assert 3 <= flipped <= 17
