"""data/eval_pipeline.py: one exact pass over an evaluation split, padded to the same number of
batches on every process, with corrupt images turned into padding and counted, on the demo data,
an image folder and a tiny TFDS dataset."""

import logging
import math

import numpy as np
import pytest

from data import eval_pipeline, skips, sources
from data.info import DatasetInfo
from tests.data.helpers import (
  GOOD_TRAIN,
  GOOD_VAL,
  TFDS_CORRUPT_VAL,
  TFDS_VAL,
  S,
  identify,
  real_examples,
  tfds_ids,
)

# The tiny TFDS dataset is built once per worker for this file and test_pipeline.py.
pytestmark = pytest.mark.xdist_group("pipeline")


@pytest.mark.parametrize("process_count", [3, 7])
def test_eval_is_exact_with_padding_and_simulated_processes(process_count):
  batch_size = 7  # 240 val images: no process shard is a multiple of 7
  single = list(eval_pipeline.eval_iterator("demo", image_size=S, local_batch_size=batch_size))
  assert len(single) == math.ceil(240 / batch_size)
  assert sum(b["mask"].sum() for b in single) == 240
  assert single[-1]["mask"].sum() == 240 % batch_size
  reference = real_examples(single)
  assert len(reference) == 240

  union, lengths = [], []
  for index in range(process_count):
    it = eval_pipeline.eval_iterator(
      "demo",
      image_size=S,
      local_batch_size=batch_size,
      process_index=index,
      process_count=process_count,
    )
    batches = list(it)
    assert len(batches) == len(it)
    lengths.append(len(batches))
    for b in batches:
      assert b["image"].shape == (batch_size, S, S, 3) and b["label"].dtype == np.int32
    union += real_examples(batches)
  assert len(set(lengths)) == 1  # every process runs the same number of eval steps
  assert lengths[0] == math.ceil(math.ceil(240 / process_count) / batch_size)
  assert sorted(union) == reference  # every example exactly once


def test_folder_info_and_eval_with_corrupt_files(image_folder, caplog):
  name = f"folder:{image_folder}"
  info = sources.dataset_info(name)
  assert info == DatasetInfo(num_classes=2, num_train_examples=8, num_eval_examples=3)

  before = skips.skipped_images()
  palette = [c for _, c in GOOD_TRAIN.values()]
  with caplog.at_level(logging.WARNING, logger="data.pipeline"):
    it = eval_pipeline.eval_iterator(name, image_size=16, local_batch_size=3, split="train")
    batches = list(it)
  assert len(batches) == math.ceil(8 / 3)
  assert it.num_skipped == 2 and skips.skipped_images() - before == 2
  assert sum(b["mask"].sum() for b in batches) == 6
  real = [
    (img, lab) for b in batches for img, lab, m in zip(b["image"], b["label"], b["mask"]) if m
  ]
  ids = identify(np.stack([img for img, _ in real]), palette)
  assert sorted(ids) == list(range(6))  # every good image exactly once
  classes = [cls for cls, _ in GOOD_TRAIN.values()]
  assert [["cat", "dog"][lab] for _, lab in real] == [classes[i] for i in ids]
  logged = caplog.text
  assert "bad.jpg" in logged and "trunc.jpeg" in logged

  val = list(eval_pipeline.eval_iterator(name, image_size=16, local_batch_size=2))
  val_ids = identify(
    np.stack([b["image"][i] for b in val for i in range(2) if b["mask"][i]]),
    [c for _, c in GOOD_VAL.values()],
  )
  assert sorted(val_ids) == [0, 1, 2]


def test_tfds_eval_exact_and_skips_corrupt_record(tfds_dir):
  union, lengths, skipped = [], [], 0
  for index in range(3):  # shards of 6, 6, 5 examples
    it = eval_pipeline.eval_iterator(
      "fcmae_tiny_tfds",
      data_dir=tfds_dir,
      image_size=8,
      local_batch_size=4,
      process_index=index,
      process_count=3,
      split="val",
    )
    batches = list(it)
    lengths.append(len(batches))
    skipped += it.num_skipped
    real = np.stack([b["image"][i] for b in batches for i in range(4) if b["mask"][i]])
    union += tfds_ids(real, "validation")
  assert lengths == [2, 2, 2] and skipped == 1
  assert sorted(union) == [i for i in range(TFDS_VAL) if i != TFDS_CORRUPT_VAL]
