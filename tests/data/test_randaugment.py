"""data/randaugment.py: every op does what timm's does, and the draws are seeded."""

import numpy as np
import pytest
import tensorflow as tf

from data import randaugment
from tests.data.helpers import S, rand_image, seed


def test_rand_augment_ops_individually():
  # Mid-contrast noise over a gradient: no op is a no-op on it.
  rng = np.random.default_rng(1)
  x = (np.linspace(40, 180, S)[None, :, None] + rng.integers(0, 40, (S, S, 3))).astype(np.int32)
  image = tf.constant(x.astype(np.uint8))
  for name in randaugment.RAND_AUGMENT_OPS:
    for sign in (-1.0, 1.0):
      out = randaugment.apply_rand_augment_op(
        name, image, 9.0, sign, randaugment.parse_rand_augment("rand-m9-mstd0.5-inc1")
      )
      assert out.shape == image.shape and out.dtype == tf.uint8, name
      assert not np.array_equal(out.numpy(), image.numpy()), name  # every op does something
  np.testing.assert_array_equal(randaugment.invert(image).numpy(), 255 - x)
  assert set(np.unique(randaugment.posterize(image, 1).numpy())) <= {0, 128}
  np.testing.assert_array_equal(
    randaugment.solarize(image, 128).numpy(), np.where(x >= 128, 255 - x, x)
  )
  # PIL convention: TranslateX(+p) samples input x + p.
  np.testing.assert_array_equal(randaugment.translate_x(image, 5).numpy()[:, :-5], x[:, 5:])
  np.testing.assert_array_equal(randaugment.rotate(image, 0.0).numpy(), x)
  low = tf.constant(np.random.default_rng(2).integers(100, 140, (S, S, 3), np.uint8))
  stretched = randaugment.auto_contrast(low).numpy()
  assert stretched.min() == 0 and stretched.max() == 255
  equalized = randaugment.equalize(low).numpy()
  assert equalized.max() - equalized.min() > 200
  assert randaugment.brightness(image, 0.0).numpy().max() == 0


def test_rand_augment_is_seeded():
  config = randaugment.parse_rand_augment("rand-m9-mstd0.5-inc1")
  assert config == randaugment.RandAugmentConfig(
    num_layers=2, magnitude=9.0, magnitude_std=0.5, increasing=True
  )
  with pytest.raises(ValueError):
    randaugment.parse_rand_augment("rand-q3")
  image = rand_image(S, S, seed=3)
  outs = [randaugment.rand_augment(image, seed(i), config).numpy() for i in range(8)]
  assert all(o.shape == (S, S, 3) and o.dtype == np.uint8 for o in outs)
  assert len({o.tobytes() for o in outs}) >= 5
  np.testing.assert_array_equal(outs[0], randaugment.rand_augment(image, seed(0), config).numpy())
