"""data/transforms.py: a JPEG's crop window decoded alone equals the same window of the whole
decoded image, other formats take the general path to the same crop, and every recipe gives a
uint8 image of the asked size."""

import numpy as np
import pytest
import tensorflow as tf

from data import augment, pipeline, transforms
from tests.data.helpers import S, photo_bytes, seed


@pytest.mark.parametrize(
  "augment_kind, scale", [("pretrain", (0.2, 1.0)), ("finetune", (0.08, 1.0))]
)
def test_a_jpeg_decodes_only_the_window_a_whole_decode_would_crop(augment_kind, scale):
  data = photo_bytes("JPEG")
  whole = tf.io.decode_jpeg(data, channels=3)
  t = transforms.train_transform(augment_kind, S, encoded=True)
  for i in range(6):
    window = augment.crop_window(tf.shape(whole), augment.split_seed(seed(i), 4)[0], scale)
    expected = augment.crop(whole, window).numpy()
    got = t.decode(tf.constant(data), seed(i)).numpy()
    assert got.shape == expected.shape
    # libjpeg decodes the window from the same DCT blocks; chroma upsampling at the window's
    # edges may round a few pixels differently by a step or two.
    difference = np.abs(got.astype(int) - expected)
    assert difference.max() <= 4 and difference.mean() < 0.01


def test_other_formats_and_pixels_take_the_general_path_to_the_same_crop():
  png = photo_bytes("PNG")
  pixels = tf.io.decode_png(png, channels=3)
  from_png = transforms.train_transform("pretrain", S, encoded=True)
  from_pixels = transforms.train_transform("pretrain", S, encoded=False)
  for i in range(4):
    a = from_png.decode(tf.constant(png), seed(i)).numpy()
    np.testing.assert_array_equal(a, from_pixels.decode(pixels, seed(i)).numpy())
    np.testing.assert_array_equal(
      from_png.finish(a, seed(i)).numpy(), from_pixels.finish(a, seed(i)).numpy()
    )


def test_every_recipe_gives_a_uint8_image_of_the_asked_size():
  data = tf.constant(photo_bytes("JPEG", "coffee"))
  for kind, options in [
    ("pretrain", None),
    ("finetune", None),
    ("finetune", {"randaugment": ""}),
    ("none", None),
  ]:
    t = transforms.train_transform(kind, S, options)
    for i in range(3):
      out = t.finish(t.decode(data, seed(i)), seed(i)).numpy()
      assert out.shape == (S, S, 3) and out.dtype == np.uint8 and out.std() > 5
  with pytest.raises(ValueError, match="unknown augment_options \\['reprob'\\]"):
    transforms.train_transform("finetune", S, {"reprob": 0.25})  # erasing runs on the device
  batch = next(
    pipeline.train_iterator("demo", image_size=S, local_batch_size=8, seed=0, augment="finetune")
  )
  assert batch["image"].shape == (8, S, S, 3) and batch["image"].dtype == np.uint8
