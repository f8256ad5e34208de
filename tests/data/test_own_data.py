"""Pretraining on the user's own images (data/folders.py, data/prepare.py, data/normalization.py):
an unlabeled folder of real photographs at any depth and in any format, .npy images of other
channel counts, the file list and statistics kept in the workdir, and the monitors without
labels."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from configs import fcmae_demo
from core import logs
from data import (
  augment,
  folders,
  normalization,
  on_device,
  pipeline,
  prepare,
  skips,
  sources,
  transforms,
)
from data.info import DatasetError
from fcmae import pretrain, visualize
from tests.data.helpers import make_npy_folder, make_unlabeled_folder
from tests.helpers import SCAN, override
from trainer import loop

RUN = {
  "batch_size": 2,
  "total_steps": 4,  # one epoch of the 8 files: the corrupt one is met once
  "warmup_steps": 1,
  "log_every_steps": 1,
  "checkpoint_every_steps": 2,
  "eval_every_steps": 0,
  "data.image_size": 64,
  "mesh.data": 1,
  "mesh.fsdp": 1,
  **SCAN,
}


def _config(**changes):
  return override(fcmae_demo.get_config(), {**RUN, **changes})


def test_an_unlabeled_folder_lists_every_image_at_any_depth_and_nothing_else(tmp_path):
  files = make_unlabeled_folder(tmp_path)
  assert folders.scan(str(tmp_path)) == files  # no notes.txt, .DS_Store, hidden folder
  assert not folders.is_labeled(str(tmp_path))
  info = sources.dataset_info(f"folder:{tmp_path}")
  assert (info.num_classes, info.num_train_examples) == (0, len(files))


@pytest.mark.parametrize("channels", [3, 1])
def test_every_format_decodes_as_pillow_reads_it(tmp_path, channels):
  """JPEG, PNG (8 and 16 bit), greyscale, RGBA and CMYK become `channels` channels; Pillow is
  the independent reference (16-bit greys scaled to 8 bits, colour to luma)."""
  for rel in make_unlabeled_folder(tmp_path):
    data = (tmp_path / rel).read_bytes()
    if rel == "a/broken.jpg":
      with pytest.raises(Exception):  # noqa: B017 (any decoding error: the pipeline skips it)
        augment.decode(data, channels)
      continue
    ours = augment.decode(data, channels).numpy().astype(np.int32)
    image = Image.open(tmp_path / rel)
    if image.mode.startswith("I"):  # 16 bit
      image = Image.fromarray(np.round(np.asarray(image) / 257).astype(np.uint8))
    reference = np.asarray(image.convert("RGB" if channels == 3 else "L"), np.int32)
    reference = reference.reshape(ours.shape)
    assert ours.shape[-1] == channels
    assert np.abs(ours - reference).mean() < 2.5, rel  # JPEG decoders and luma rounding


def test_an_unlabeled_folder_pretrains_resumes_exactly_and_counts_the_corrupt_file_once(
  tmp_path, capsys, caplog
):
  root = tmp_path / "photos"
  files = make_unlabeled_folder(root)
  workdir = tmp_path / "run"
  config = _config(**{"data.name": f"folder:{root}"})
  before = skips.skipped_images()
  loop.train_and_evaluate(
    config, str(workdir), pretrain.make_task(config, str(workdir)), devices=jax.devices()[:1]
  )
  out = capsys.readouterr().out
  assert f"Data: {len(files)} images under folder:{root}" in out
  assert "Data: normalisation mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)" in out
  assert "Monitors: kNN and linear probe skipped" in out and "has no labels" in out
  assert (workdir / folders.LIST_NAME).read_text().split() == files
  assert skips.skipped_images() - before == 1  # one epoch: the corrupt file met once
  assert "a/broken.jpg" in caplog.text
  rows = logs.read_metrics(str(workdir))
  losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
  assert sorted(losses) == [1, 2, 3, 4]
  assert max(r.get("skipped_images", 0) for r in rows) >= 1  # in the metrics rows too

  # Resume from step 2 with a file added to the folder: the workdir's list rules, so the
  # order (and the corrupt file's slot) is the same, and steps 3 and 4 are redone exactly.
  shutil.rmtree(workdir / "checkpoints" / "4")
  shutil.copy(root / "astronaut.jpg", root / "a" / "added_later.jpg")
  source = sources.get_source(f"folder:{root}", None)
  order = source.order_indices(
    "train", sources.derived_seed(config.seed, sources.ORDER_TAG), 0, np.arange(8)
  )
  slot = list(np.asarray(order)).index(files.index("a/broken.jpg"))  # its position in epoch 0
  before = skips.skipped_images()
  config = _config(**{"data.name": f"folder:{root}"})
  loop.train_and_evaluate(
    config, str(workdir), pretrain.make_task(config, str(workdir)), devices=jax.devices()[:1]
  )
  assert f"Data: {len(files)} images of folder:{root}, from" in capsys.readouterr().out
  assert skips.skipped_images() - before == (1 if slot >= 2 * RUN["batch_size"] else 0)
  resumed = {r["step"]: r["loss"] for r in logs.read_metrics(str(workdir)) if "loss" in r}
  np.testing.assert_array_equal([resumed[3], resumed[4]], [losses[3], losses[4]])


def test_npy_images_of_four_channels_with_statistics_computed_and_kept(tmp_path, capsys):
  root = make_npy_folder(tmp_path / "bands", channels=4, count=4)
  workdir = tmp_path / "run"
  workdir.mkdir()
  config = _config(**{"data.name": f"folder:{root}", "model.in_chans": 4, "data.stats_images": 3})
  prepared = prepare.prepare(config, str(workdir))
  assert prepared.info.num_train_examples == 4
  kept = json.loads((workdir / normalization.STATS_NAME).read_text())
  # The first 3 arrays of the list, by numpy: uint8, uint16 (scaled), float32 in [0, 1].
  pixels = []
  for rel in folders.read_list(str(workdir))[:3]:
    x = np.load(root / rel)
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}
    pixels.append(np.round(x / scale[x.dtype] * 255).reshape(-1, 4) / 255)
  pixels = np.concatenate(pixels)
  np.testing.assert_allclose(kept["mean"], pixels.mean(0), atol=1e-5)
  np.testing.assert_allclose(kept["std"], pixels.std(0), atol=1e-5)
  assert kept["images"] == 3 and prepared.stats.mean == tuple(kept["mean"])
  assert "computed over the first 3 images" in capsys.readouterr().out
  again = prepare.prepare(config, str(workdir))  # a resume reads them back
  assert again.stats.mean == prepared.stats.mean and "read from" in again.stats.origin

  batch = next(
    pipeline.train_iterator(
      f"folder:{root}", image_size=32, local_batch_size=2, seed=0, channels=4, augment="none"
    )
  )
  assert batch["image"].shape == (2, 32, 32, 4) and batch["image"].std() > 10


@pytest.mark.parametrize(
  "make, in_chans, words",
  [
    (lambda root: root.mkdir(), 3, "holds no image files"),
    (lambda root: make_npy_folder(root, channels=5, count=1), 4, "has 5 channels"),
    (
      lambda root: (root.mkdir(), (root / "a.jpg").write_bytes(b"no jpeg"), (root / "b.txt")),
      3,
      "none of its first 1 image files could be read",
    ),
    (lambda root: make_unlabeled_folder(root), 4, "holds no .npy arrays"),
  ],
  ids=["empty", "npy_channels", "no_readable_image", "no_npy_for_4_channels"],
)
def test_unusable_folders_are_refused_before_anything_is_written(tmp_path, make, in_chans, words):
  root = tmp_path / "data"
  make(root)
  workdir = tmp_path / "run"
  config = _config(**{"data.name": f"folder:{root}", "model.in_chans": in_chans})
  with pytest.raises(DatasetError, match=words):
    prepare.prepare(config, str(workdir))
  assert not workdir.exists()


def test_probe_data_must_have_labels(tmp_path):
  root = tmp_path / "photos"
  make_unlabeled_folder(root)
  config = _config(**{"data.name": "demo", "probe.data": f"folder:{root}"})
  with pytest.raises(DatasetError, match="has no labels"):
    pretrain.make_task(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_the_pictures_show_the_first_readable_images_of_the_folder(tmp_path):
  files = make_unlabeled_folder(tmp_path)
  config = _config(**{"data.name": f"folder:{tmp_path}"})
  prepare.prepare(config, None)
  pictures = visualize.sample_images(config, 3)
  transform = transforms.eval_transform(64, 0.875)
  readable = [f for f in files if f != "a/broken.jpg"][:3]
  seed = tf.zeros([2], tf.int64)
  expected = [
    transform.finish(transform.decode((tmp_path / f).read_bytes(), seed), seed) for f in readable
  ]
  np.testing.assert_allclose(pictures, on_device.normalize(np.stack(expected)), atol=1e-6)
