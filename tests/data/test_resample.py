"""data/resample.py: PIL's bicubic resize bit for bit (its horizontal pass, then its vertical),
within a few levels of a one-call ``Image.resize`` on photographs, and the same through the
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


def pil_two_pass(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Pillow's algorithm spelled as two one-axis resizes: horizontal first, then vertical."""
  squeeze = image.shape[-1] == 1
  im = Image.fromarray(image[..., 0] if squeeze else image)
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


def test_equals_pils_horizontal_then_vertical_pass_bit_for_bit():
  for crop, rng in crops(12):
    # Shrinking, enlarging, and one axis each way.
    for height, width in [(224, 224), tuple(int(v) for v in rng.integers(1, 500, 2))]:
      got = resample.resize_bicubic(crop, height, width)
      assert got.shape == (height, width, 3) and got.dtype == np.uint8
      np.testing.assert_array_equal(got, pil_two_pass(crop, height, width))
  grey = photo("camera")[100:300, 50:333, :1]
  np.testing.assert_array_equal(resample.resize_bicubic(grey, 61, 97), pil_two_pass(grey, 61, 97))


def test_within_a_few_levels_of_a_one_call_pil_resize():
  """Pillow 13 runs the vertical pass first for some sizes (a different rounding of the
  intermediate: a few levels at most pixels of a sharp edge); Pillow up to 12 is the two-pass
  order above, exactly."""
  diffs = []
  for crop, _ in crops(15, seed=1, smallest=100):
    ref = np.asarray(Image.fromarray(crop).resize((224, 224), BICUBIC), np.int16)
    diffs.append(np.abs(resample.resize_bicubic(crop, 224, 224) - ref))
  diffs = np.stack(diffs)
  assert diffs.max() <= 16 and diffs.mean() < 0.05 and (diffs > 2).mean() < 1e-3


@pytest.mark.parametrize("shape", [(224, 224), (1, 1), (300, 7), (5, 400)])
def test_identity_and_extreme_shapes(shape):
  image = photo()[: shape[0], : shape[1]]
  np.testing.assert_array_equal(resample.resize_bicubic(image, *shape), image)
  out = resample.resize_bicubic(image, 33, 17)
  np.testing.assert_array_equal(out, pil_two_pass(image, 33, 17))


def test_the_pipelines_resize_is_this_one_in_and_out_of_a_tf_function():
  image = photo("coffee")[20:331, 40:300]
  fn = tf.function(
    lambda x: augment.resize(x, 24), input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)]
  )
  out = fn(tf.constant(image))
  assert out.shape == (24, 24, 3) and out.dtype == tf.uint8
  np.testing.assert_array_equal(out.numpy(), resample.resize_bicubic(image, 24, 24))
  short = augment.resize_shorter_side(tf.constant(image), 36).numpy()
  np.testing.assert_array_equal(short, pil_two_pass(image, 43, 36))  # 311 x 260 -> 43 x 36
