"""data/resample.py: Pillow's bicubic resize bit for bit on photographs (one ``Image.resize``
call, and the two one-axis passes in the order Pillow 13 runs them), and the same through the
tf.function the pipeline runs."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data import augment, resample

BICUBIC = Image.Resampling.BICUBIC


def photo(name="astronaut"):
  from skimage import data as skdata

  image = np.asarray(getattr(skdata, name)())
  return np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]


def pil(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Pillow's own resize (one call)."""
  squeeze = image.shape[-1] == 1
  out = np.asarray(
    Image.fromarray(image[..., 0] if squeeze else image).resize((width, height), BICUBIC)
  )
  return out[..., None] if squeeze else out


def pil_two_pass(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Pillow's algorithm spelled as two one-axis resizes, in Pillow 13's order: vertical first
  when the height shrinks by more than twice as many pixels as the width, else horizontal."""
  squeeze = image.shape[-1] == 1
  im = Image.fromarray(image[..., 0] if squeeze else image)
  dh, dw = im.height - height, im.width - width
  if dh > 0 and dh > 2 * dw:
    im = im.resize((im.width, height), BICUBIC).resize((width, height), BICUBIC)
  else:
    im = im.resize((width, im.height), BICUBIC).resize((width, height), BICUBIC)
  out = np.asarray(im)
  return out[..., None] if squeeze else out


def crops(count, seed=0, smallest=1):
  rng = np.random.default_rng(seed)
  for name in ("astronaut", "coffee", "camera"):
    image = photo(name)
    for _ in range(count):
      h, w = (int(v) for v in rng.integers(smallest, 400, 2))
      h, w = min(h, image.shape[0]), min(w, image.shape[1])
      top = int(rng.integers(0, image.shape[0] - h + 1))
      left = int(rng.integers(0, image.shape[1] - w + 1))
      yield image[top : top + h, left : left + w], rng


def test_equals_pillows_resize_bit_for_bit():
  calls = 0
  for crop, rng in crops(12):
    # Shrinking, enlarging, one axis each way, and crops much taller than wide (vertical first).
    sizes = [(224, 224), tuple(int(v) for v in rng.integers(1, 500, 2)), (9, crop.shape[1])]
    for height, width in sizes:
      got = resample.resize_bicubic(crop, height, width)
      assert got.shape == (height, width, 3) and got.dtype == np.uint8
      np.testing.assert_array_equal(got, pil(crop, height, width))
      np.testing.assert_array_equal(got, pil_two_pass(crop, height, width))
      calls += 1
  assert calls == 108
  grey = photo("camera")[100:300, 50:333, :1]
  for height, width in [(61, 97), (20, 280)]:  # horizontal first; vertical first
    np.testing.assert_array_equal(
      resample.resize_bicubic(grey, height, width), pil(grey, height, width)
    )


def test_the_two_pass_orders_differ_where_pillow_13_switched():
  """The vertical-first case is real: the other order rounds its intermediate differently."""
  crop = photo("astronaut")[:400, :300]
  horizontal_first = np.asarray(
    Image.fromarray(crop).resize((250, 400), BICUBIC).resize((250, 40), BICUBIC)
  )
  got = resample.resize_bicubic(crop, 40, 250)
  np.testing.assert_array_equal(got, pil(crop, 40, 250))
  assert (got != horizontal_first).any()


@pytest.mark.parametrize("shape", [(224, 224), (1, 1), (300, 7), (5, 400)])
def test_identity_and_extreme_shapes(shape):
  image = photo()[: shape[0], : shape[1]]
  np.testing.assert_array_equal(resample.resize_bicubic(image, *shape), image)
  out = resample.resize_bicubic(image, 33, 17)
  np.testing.assert_array_equal(out, pil(image, 33, 17))


def test_the_pipelines_resize_is_this_one_in_and_out_of_a_tf_function():
  image = photo("coffee")[20:331, 40:300]
  fn = tf.function(
    lambda x: augment.resize(x, 24), input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)]
  )
  out = fn(tf.constant(image))
  assert out.shape == (24, 24, 3) and out.dtype == tf.uint8
  np.testing.assert_array_equal(out.numpy(), resample.resize_bicubic(image, 24, 24))
  short = augment.resize_shorter_side(tf.constant(image), 36).numpy()
  np.testing.assert_array_equal(short, pil(image, 43, 36))  # 311 x 260 -> 43 x 36
