"""data/demo.py: the built-in data are deterministic, balanced and learnable."""

import numpy as np

from data import demo


def _fft_features(images):
  """Translation/colour-invariant features: |FFT| of the standardized luma."""
  g = images.astype(np.float32).mean(-1)
  g = (g - g.mean((1, 2), keepdims=True)) / (g.std((1, 2), keepdims=True) + 1e-6)
  f = np.abs(np.fft.fft2(g)).reshape(len(images), -1)
  return f / np.linalg.norm(f, axis=1, keepdims=True)


def test_demo_data_is_deterministic_balanced_and_learnable():
  train_x, train_y = demo.arrays("train")
  val_x, val_y = demo.arrays("validation")
  num_classes = len(demo.CLASSES)
  assert num_classes >= 10
  assert train_x.shape == (len(train_y), 64, 64, 3) and train_x.dtype == np.uint8
  assert train_y.dtype == np.int32 and val_x.shape[1:] == (64, 64, 3)
  assert np.bincount(train_y).tolist() == [len(train_y) // num_classes] * num_classes
  assert np.bincount(val_y).tolist() == [len(val_y) // num_classes] * num_classes
  assert len(train_y) >= 1000
  # Same images on every call (bypassing the cache) and train != val.
  again_x, again_y = demo.arrays.__wrapped__("train")
  np.testing.assert_array_equal(again_x, train_x)
  np.testing.assert_array_equal(again_y, train_y)
  assert not np.array_equal(train_x[: len(val_x)], val_x)
  # Images have structure (not flat) ...
  assert train_x.reshape(len(train_x), -1).std(1).min() > 10
  # ... and the classes are visually distinct: a nearest-class-mean classifier
  # on |FFT| features fit on train is far above chance (1/12) on val.
  feats_train, feats_val = _fft_features(train_x), _fft_features(val_x)
  means = np.stack([feats_train[train_y == c].mean(0) for c in range(num_classes)])
  pred = np.argmin(((feats_val[:, None] - means[None]) ** 2).sum(-1), axis=1)
  accuracy = (pred == val_y).mean()
  assert accuracy > 0.7, accuracy
