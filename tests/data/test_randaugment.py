"""data/randaugment.py: every op does what timm's does, the draws are seeded, and the compiled
kernels (data/randaugment_kernels.py) equal the TensorFlow formulations they replaced."""

import numpy as np
import pytest
import tensorflow as tf

from data import randaugment
from data.augment import to_uint8
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


# The TensorFlow formulations the compiled kernels replaced: the independent references below.


def _tf_affine(image, transform, fill):
  x = tf.cast(image, tf.float32)
  x = tf.concat([x, tf.ones_like(x[..., :1])], axis=-1)[None]  # a coverage channel
  t = tf.concat([tf.cast(tf.reshape(transform, [6]), tf.float32), tf.zeros([2])], 0)[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
    images=x,
    transforms=t,
    output_shape=tf.shape(image)[:2],
    fill_value=0.0,
    interpolation="BILINEAR",
    fill_mode="CONSTANT",
  )[0]
  rgb, coverage = out[..., :3], out[..., 3:]
  return to_uint8(rgb + (1.0 - coverage) * tf.constant(fill, tf.float32))


def _tf_sharpness(image, factor):
  x = tf.cast(image, tf.float32)[None]
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.round(tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], padding="VALID"))[0]
  smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  interior = tf.pad(tf.ones_like(smooth[1:-1, 1:-1]), [[1, 1], [1, 1], [0, 0]]) > 0
  d = tf.where(interior, smooth, x[0])
  return to_uint8(d + factor * (x[0] - d))


def _tf_equalize(image):
  def channel(c):
    im = tf.cast(image[:, :, c], tf.int32)
    hist = tf.math.bincount(im, minlength=256, maxlength=256, dtype=tf.int32)
    nonzero = tf.boolean_mask(hist, hist > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    safe_step = tf.maximum(step, 1)
    lut = (tf.cumsum(hist) + safe_step // 2) // safe_step
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    return tf.where(step == 0, im, tf.gather(lut, im))

  return tf.cast(tf.stack([channel(c) for c in range(3)], axis=-1), tf.uint8)


def _photos():
  from skimage import data as skdata

  for name, box in (("astronaut", (40, 100, 224, 224)), ("coffee", (0, 150, 300, 187))):
    top, left, h, w = box
    yield np.ascontiguousarray(getattr(skdata, name)()[top : top + h, left : left + w])


def test_compiled_affine_equals_tensorflows_projective_transform():
  fill = randaugment.IMAGENET_MEAN_PIXEL
  magnitudes = np.linspace(0.0, 1.0, 7)
  for image in _photos():
    x = tf.constant(image)
    h, w = image.shape[:2]
    for level in magnitudes:
      for sign in (-1.0, 1.0):
        checks = {
          "rotate": randaugment.rotate(x, sign * level * 30.0),
          "shear_x": randaugment.shear_x(x, sign * level * 0.3),
          "shear_y": randaugment.shear_y(x, sign * level * 0.3),
          "translate_x": randaugment.translate_x(x, sign * level * 0.45 * w),
          "translate_y": randaugment.translate_y(x, sign * level * 0.45 * h),
        }
        transforms = {
          "rotate": _rotation(x, sign * level * 30.0),  # the op's float32 transform
          "shear_x": [1, sign * level * 0.3, 0, 0, 1, 0],
          "shear_y": [1, 0, 0, sign * level * 0.3, 1, 0],
          "translate_x": [1, 0, sign * level * 0.45 * w, 0, 1, 0],
          "translate_y": [1, 0, 0, 0, 1, sign * level * 0.45 * h],
        }
        for name, got in checks.items():
          t = tf.cast(transforms[name], tf.float32)
          ref = _tf_affine(x, t, fill).numpy()
          np.testing.assert_array_equal(got.numpy(), ref, err_msg=f"{name} {sign * level}")
  # Outside the image: the fill colour exactly.
  far = randaugment.translate_x(tf.constant(image), 10_000.0).numpy()
  assert (far == np.array(fill, np.uint8)).all()


def _rotation(image, degrees):
  theta = tf.cast(degrees, tf.float32) * (np.pi / 180.0)
  shape = tf.cast(tf.shape(image), tf.float32)
  cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
  cos, sin = tf.cos(theta), tf.sin(theta)
  a0, a1, b0, b1 = cos, -sin, sin, cos
  return tf.stack([a0, a1, cx - (a0 * cx + a1 * cy), b0, b1, cy - (b0 * cx + b1 * cy)])


def test_compiled_sharpness_and_equalize_equal_their_tensorflow_formulations():
  low = np.random.default_rng(2).integers(100, 140, (S, S, 3), np.uint8)
  flat = np.full((S, S, 3), 77, np.uint8)  # one level: equalize leaves it alone
  for image in [*_photos(), low, flat]:
    x = tf.constant(image)
    for factor in (0.1, 0.55, 1.0, 1.45, 1.9):
      f = tf.constant(factor, tf.float32)
      np.testing.assert_array_equal(
        randaugment.sharpness(x, f).numpy(), _tf_sharpness(x, f).numpy(), err_msg=str(factor)
      )
    np.testing.assert_array_equal(randaugment.equalize(x).numpy(), _tf_equalize(x).numpy())
