"""Shared by the input-pipeline tests: small image folders with corrupt files, a tiny TFDS
dataset built on disk, and ways to compare and identify batches."""

import io
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from data import pipeline

S = 32  # image size used by most tests (small = fast)


def photo_bytes(fmt: str = "JPEG", name: str = "astronaut") -> bytes:
  """A photograph that scikit-image ships (512x512), encoded as `fmt`."""
  from skimage import data as skdata

  buf = io.BytesIO()
  Image.fromarray(getattr(skdata, name)()).save(buf, format=fmt, quality=90)
  return buf.getvalue()


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


GOOD_TRAIN = {  # file -> (class, colour); colours are far apart so JPEG noise is harmless
  "cat/a.png": ("cat", (200, 30, 30)),
  "cat/b.JPG": ("cat", (30, 200, 30)),
  "cat/c.bmp": ("cat", (30, 30, 200)),
  "dog/d.jpeg": ("dog", (200, 200, 30)),
  "dog/e.gif": ("dog", (200, 30, 200)),
  "dog/sub/f.webp": ("dog", (30, 200, 200)),
}


GOOD_VAL = {
  "cat/g.png": ("cat", (120, 120, 120)),
  "dog/h.png": ("dog", (250, 250, 250)),
  "dog/i.jpg": ("dog", (10, 10, 10)),
}


GOOD_TRAIN_CLASSES = [cls for cls, _ in GOOD_TRAIN.values()]


def write_image(path, colour, size):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", size, colour).save(
    path,
    format={
      ".jpg": "JPEG",
      ".jpeg": "JPEG",
      ".png": "PNG",
      ".bmp": "BMP",
      ".gif": "GIF",
      ".webp": "WEBP",
    }[os.path.splitext(path)[1].lower()],
  )


def make_image_folder(root):
  """ROOT/train (8 files: 6 good, 2 corrupt) and ROOT/val (3 good), varied formats and sizes."""
  for split, files in (("train", GOOD_TRAIN), ("val", GOOD_VAL)):
    for k, (rel, (_, colour)) in enumerate(files.items()):
      write_image(str(root / split / rel), colour, (24 + 5 * k, 40 - 3 * k))
  (root / "train" / "cat" / "bad.jpg").write_bytes(b"this is not an image at all" * 20)
  buf = io.BytesIO()
  noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3), np.uint8)
  Image.fromarray(noise).save(buf, format="JPEG")
  (root / "train" / "dog" / "trunc.jpeg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
  (root / "train" / "dog" / "notes.txt").write_text("not an image extension: ignored")
  return root


def identify(images, palette):
  """Index into `palette` of each (solid-colour) uint8 image, by nearest colour."""
  colours = images.astype(np.float32).reshape(len(images), -1, 3).mean(1)  # [N, 3]
  dist = np.abs(colours[:, None] - np.array(palette, np.float32)[None]).max(-1)
  assert (dist.min(1) < 6).all(), dist.min(1)
  return dist.argmin(1).tolist()


TFDS_TRAIN, TFDS_VAL, TFDS_CORRUPT_VAL = 40, 17, 5


def tfds_colour(split, i):
  """A distinct solid colour per example (identifies it after preprocessing)."""
  return (10 + 5 * i, 60 if split == "train" else 200, 30 + 4 * (i % 7))


class FcmaeTinyTfds(tfds.core.GeneratorBasedBuilder):
  """40 train / 17 validation solid-colour images; validation #5 is corrupt bytes."""

  VERSION = tfds.core.Version("1.0.0")
  # No checksums file next to this module. Also avoids tfds's `code_path`,
  # which imports `importlib_resources` (not a declared dependency on 3.11).
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.ClassLabel(num_classes=4),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    return {
      "train": self._generate_examples("train", TFDS_TRAIN),
      "validation": self._generate_examples("validation", TFDS_VAL),
    }

  def _generate_examples(self, split, n):
    for i in range(n):
      if split == "validation" and i == TFDS_CORRUPT_VAL:
        image = io.BytesIO(b"corrupt record" * 10)
      else:
        image = np.zeros((20 + i % 3, 24, 3), np.uint8) + np.array(tfds_colour(split, i), np.uint8)
      yield f"{split}{i}", {"image": image, "label": i % 4}


def tfds_ids(images, split):
  n = TFDS_TRAIN if split == "train" else TFDS_VAL
  return identify(images, [tfds_colour(split, i) for i in range(n)])


def real_examples(batches):
  """Multiset of (label, image bytes) of the real (mask=1) examples."""
  out = []
  for b in batches:
    assert b["mask"].dtype == np.float32 and set(np.unique(b["mask"])) <= {0.0, 1.0}
    for image, label, m in zip(b["image"], b["label"], b["mask"]):
      if m:
        out.append((int(label), image.tobytes()))
      else:
        assert not image.any() and label == 0  # padding is zeros
  return sorted(out)


def seed(i):
  return tf.constant([i, 12345], tf.int64)


def rand_image(h, w, seed=0):
  return tf.constant(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


def process_count_invariant(name, *, runs, process_count, local_batch_size, **kwargs):
  """Asserts that concatenating the processes' step-k batches gives the 1-process step-k batch.

  runs: (start_step, number of steps) pairs. Returns the steps per epoch."""
  global_batch = local_batch_size * process_count
  for start, steps in runs:
    single_it = pipeline.train_iterator(
      name, local_batch_size=global_batch, start_step=start, **kwargs
    )
    single = take(single_it, steps)
    per_process = []
    for index in range(process_count):
      it = pipeline.train_iterator(
        name,
        local_batch_size=local_batch_size,
        start_step=start,
        process_index=index,
        process_count=process_count,
        **kwargs,
      )
      assert it.steps_per_epoch == single_it.steps_per_epoch
      per_process.append(take(it, steps))
    merged = [
      {k: np.concatenate([p[step][k] for p in per_process]) for k in single[0]}
      for step in range(steps)
    ]
    assert_same_batches(merged, single)
  return single_it.steps_per_epoch


def _photo(name: str, size: int = 80) -> Image.Image:
  """A photograph that scikit-image ships, shrunk to `size` pixels on its shorter side."""
  from skimage import data as skdata

  image = Image.fromarray(getattr(skdata, name)())
  scale = size / min(image.size)
  return image.resize((round(image.size[0] * scale), round(image.size[1] * scale)))


def make_unlabeled_folder(root):
  """ROOT holding 8 image files at depths 1 to 3, no classes: JPEG, PNG, 16-bit greyscale PNG,
  greyscale JPEG, RGBA PNG, CMYK JPEG, one corrupt JPEG; and files that are not images (a note,
  a .DS_Store, a hidden folder). Returns the relative paths of the 8 image files, sorted."""
  files = {
    "astronaut.jpg": lambda p: _photo("astronaut").save(p, quality=90),
    "a/coffee.png": lambda p: _photo("coffee").save(p),
    "a/b/camera16.png": lambda p: Image.fromarray(
      np.asarray(_photo("camera"), np.uint16) * 257
    ).save(p),
    "a/b/c/moon.jpg": lambda p: _photo("moon").save(p, quality=90),
    "grey/text.jpeg": lambda p: _photo("text").save(p),
    "rgba/chelsea.png": lambda p: _photo("chelsea").convert("RGBA").save(p),
    "cmyk/rocket.jpg": lambda p: _photo("rocket").convert("CMYK").save(p, quality=90),
    "a/broken.jpg": lambda p: open(p, "wb").write(b"\xff\xd8\xff\xe0 this is not a jpeg" * 8),
  }
  for rel, write in files.items():
    os.makedirs(os.path.dirname(os.path.join(root, rel)) or root, exist_ok=True)
    write(os.path.join(root, rel))
  (root / "notes.txt").write_text("not an image: ignored")
  (root / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
  (root / ".cache").mkdir()
  (root / ".cache" / "thumb.jpg").write_bytes(photo_bytes())
  return sorted(files)


def make_npy_folder(root, channels: int = 4, count: int = 4):
  """ROOT/x/<i>.npy: (H, W, channels) arrays made of photographs (RGB and a greyscale channel
  after it), uint8, uint16 and float32 in turn."""
  root.mkdir(parents=True, exist_ok=True)
  names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"]
  for i in range(count):
    rgb = np.asarray(_photo(names[i % len(names)], 64).convert("RGB"))[:64, :64]
    grey = rgb.mean(-1, keepdims=True).astype(np.uint8)
    x = np.concatenate([rgb] + [grey] * (channels - 3), -1)[..., :channels]
    x = [x, x.astype(np.uint16) * 257, x.astype(np.float32) / 255][i % 3]
    (root / "x").mkdir(exist_ok=True)
    np.save(root / "x" / f"{i}.npy", x)
  return root
