"""data/pipeline.py: shapes and normalisation, determinism, exact resume, process-count
invariance, and corrupt images skipped and counted, on the demo data, image folders and a tiny
TFDS dataset."""

import logging

import numpy as np
import pytest

from data import demo, eval_pipeline, pipeline, skips, sources
from data.info import DatasetInfo, batch_spec
from tests.data.helpers import (
  GOOD_TRAIN,
  GOOD_TRAIN_CLASSES,
  TFDS_TRAIN,
  TFDS_VAL,
  S,
  assert_same_batches,
  identify,
  process_count_invariant,
  real_examples,
  take,
  tfds_ids,
  write_image,
)

# The tiny TFDS dataset is built once per worker for this file and test_eval_pipeline.py.
pytestmark = pytest.mark.xdist_group("pipeline")


def test_train_batches_are_uint8_pixels_of_the_layout_batch_spec_names():
  it = pipeline.train_iterator("demo", image_size=S, local_batch_size=8, seed=0)
  spec = batch_spec(8, S)
  for batch in take(it, 3):
    assert set(batch) == set(spec)
    for name, (shape, dtype) in spec.items():
      assert batch[name].shape == shape and batch[name].dtype == dtype, name
    assert batch["image"].dtype == np.uint8 and batch["image"].std() > 10  # pixels, not zeros
    assert batch["label"].min() >= 0 and batch["label"].max() < len(demo.CLASSES)
  assert it.steps_per_epoch == 1200 // 8 and it.step == 3 and it.epoch == 0


def test_augment_none_gives_the_eval_crops_in_shuffled_order():
  # The eval pass over 'train' (natural order) and an epoch of the training
  # stream with augment='none' must contain the same (image, label) pairs.
  evaluated = real_examples(
    eval_pipeline.eval_iterator("demo", image_size=S, local_batch_size=100, split="train")
  )
  it = pipeline.train_iterator("demo", image_size=S, local_batch_size=100, seed=3, augment="none")
  epoch = take(it, it.steps_per_epoch)
  trained = sorted((int(y), x.tobytes()) for b in epoch for x, y in zip(b["image"], b["label"]))
  assert trained == evaluated
  order = np.concatenate([b["label"] for b in epoch])
  assert not np.array_equal(order, demo.arrays("train")[1])  # shuffled


def test_same_seed_same_stream_and_different_seed_differs():
  a = take(pipeline.train_iterator("demo", image_size=S, local_batch_size=8, seed=7), 3)
  b = take(pipeline.train_iterator("demo", image_size=S, local_batch_size=8, seed=7), 3)
  c = take(pipeline.train_iterator("demo", image_size=S, local_batch_size=8, seed=8), 3)
  assert_same_batches(a, b)
  assert not np.array_equal(a[0]["image"], c[0]["image"])
  assert not all(np.array_equal(x["label"], y["label"]) for x, y in zip(a, c))


def test_stream_does_not_depend_on_parallelism_or_prefetch(monkeypatch):
  kwargs = dict(image_size=S, local_batch_size=8, seed=1, augment="finetune")
  reference = take(pipeline.train_iterator("demo", **kwargs), 3)
  monkeypatch.setenv("FCMAE_DATA_THREADS", "1")
  serial = take(pipeline.train_iterator("demo", prefetch=0, **kwargs), 3)
  assert_same_batches(reference, serial)


@pytest.mark.parametrize("augment", ["pretrain", "finetune"])
def test_resume_is_exact_within_and_across_epochs(augment):
  # Process 1 of 10, 16 per process -> global batch 160 -> 1200 // 160 = 7 steps per epoch.
  kwargs = dict(
    image_size=S, local_batch_size=16, seed=11, process_index=1, process_count=10, augment=augment
  )
  fresh_it = pipeline.train_iterator("demo", **kwargs)
  assert fresh_it.steps_per_epoch == 7
  fresh = take(fresh_it, 10)
  for start in (3, 6):  # inside epoch 0; across the 0 -> 1 boundary
    resumed_it = pipeline.train_iterator("demo", start_step=start, **kwargs)
    assert resumed_it.step == start
    assert_same_batches(take(resumed_it, 3), fresh[start : start + 3])
  # Epoch 1 is a different order.
  epoch0 = np.concatenate([b["label"] for b in fresh[:7]])
  epoch1 = np.concatenate([b["label"] for b in fresh[7:10]])
  assert not np.array_equal(epoch0[: len(epoch1)], epoch1)


def test_resume_far_ahead_is_cheap():
  # Step 10**6 of a 9-step epoch (1200 // (32 x 4)): must not decode a million batches.
  it = pipeline.train_iterator(
    "demo",
    image_size=S,
    local_batch_size=32,
    seed=0,
    start_step=10**6,
    process_index=0,
    process_count=4,
  )
  assert it.steps_per_epoch == 9 and it.epoch == 10**6 // 9
  assert next(it)["image"].shape == (32, S, S, 3)


def test_demo_stream_does_not_depend_on_process_count():
  # 1200 examples, global batch 200 -> 6 steps per epoch; steps 0-1, then 4-7
  # resumed (crosses the epoch boundary at 6).
  steps_per_epoch = process_count_invariant(
    "demo",
    runs=[(0, 2), (4, 4)],
    process_count=2,
    local_batch_size=100,
    image_size=16,
    seed=4,
    augment="pretrain",
  )
  assert steps_per_epoch == 6


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="augment"):
    pipeline.train_iterator("demo", image_size=S, local_batch_size=8, seed=0, augment="nope")
  with pytest.raises(ValueError, match="unknown augment_options"):
    pipeline.train_iterator(
      "demo", image_size=S, local_batch_size=8, seed=0, augment_options={"re_prob": 0.1}
    )
  with pytest.raises(ValueError, match="local_batch_size"):
    pipeline.train_iterator("demo", image_size=S, local_batch_size=5000, seed=0)
  with pytest.raises(ValueError):
    eval_pipeline.eval_iterator(
      "demo", image_size=S, local_batch_size=8, process_index=3, process_count=3
    )


def _epoch_order_paths(name, seed, epoch, split="train"):
  """White box: the file paths of a folder source's global order of `epoch`."""
  source = sources.get_source(name, None)
  n = source.split_size(split)
  index = source.order_indices(
    split, sources.derived_seed(seed, sources.ORDER_TAG), epoch, np.arange(n)
  )
  return [source.example_name(split, int(i)) for i in index.numpy()]


def test_folder_training_survives_corrupt_files(image_folder, caplog):
  name = f"folder:{image_folder}"
  palette = [c for _, c in GOOD_TRAIN.values()]
  good = {str(image_folder / "train" / rel): k for k, rel in enumerate(GOOD_TRAIN)}
  before = skips.skipped_images()
  it = pipeline.train_iterator(name, image_size=16, local_batch_size=2, seed=0, augment="none")
  assert it.steps_per_epoch == 4  # 8 files // 2, corrupt files included
  with caplog.at_level(logging.WARNING, logger="data.pipeline"):
    batches = take(it, 12)  # 3 epochs; every batch is full
  assert all(b["image"].shape == (2, 16, 16, 3) for b in batches)
  assert it.num_skipped == 6 and skips.skipped_images() - before == 6  # 2 corrupt files x 3 epochs
  assert "bad.jpg" in caplog.text and "trunc.jpeg" in caplog.text
  for epoch in range(3):
    ids = identify(
      np.concatenate([b["image"] for b in batches[4 * epoch : 4 * epoch + 4]]), palette
    )
    labels = np.concatenate([b["label"] for b in batches[4 * epoch : 4 * epoch + 4]])
    assert [["cat", "dog"][y] for y in labels] == [GOOD_TRAIN_CLASSES[i] for i in ids]
    # Slot p holds the first decodable image at positions p, p+1, ... of the
    # epoch's global order (wrapping around): every good image at least once,
    # the one after a corrupt run twice (or three times).
    order = _epoch_order_paths(name, 0, epoch)
    expected = [
      next(good[order[q % 8]] for q in range(p, p + 8) if order[q % 8] in good) for p in range(8)
    ]
    assert ids == expected
    assert sorted(set(ids)) == list(range(6))
  # Deterministic despite the skips, and resuming after a skip is exact.
  again = take(
    pipeline.train_iterator(name, image_size=16, local_batch_size=2, seed=0, augment="none"), 12
  )
  assert_same_batches(batches, again)
  for start in (1, 3, 6):
    resumed = take(
      pipeline.train_iterator(
        name, image_size=16, local_batch_size=2, seed=0, augment="none", start_step=start
      ),
      3,
    )
    assert_same_batches(resumed, batches[start : start + 3])
  pretrain = next(pipeline.train_iterator(name, image_size=16, local_batch_size=2, seed=0))
  assert pretrain["image"].shape == (2, 16, 16, 3)


@pytest.mark.parametrize("process_count,local_batch_size", [(2, 2), (4, 1)])
def test_folder_stream_does_not_depend_on_process_count(
  image_folder, process_count, local_batch_size
):
  # 8 files (2 corrupt), global batch 4 -> 2 steps per epoch; the corrupt
  # files' slots are filled identically whichever process owns them.
  steps_per_epoch = process_count_invariant(
    f"folder:{image_folder}",
    runs=[(0, 5), (3, 3)],
    process_count=process_count,
    local_batch_size=local_batch_size,
    image_size=16,
    seed=9,
    augment="pretrain",
  )
  assert steps_per_epoch == 2


def test_folder_all_corrupt_raises(tmp_path):
  root = tmp_path / "broken"
  for k in range(4):
    (root / "train" / "cat").mkdir(parents=True, exist_ok=True)
    (root / "train" / "cat" / f"{k}.png").write_bytes(b"garbage")
  (root / "val" / "cat").mkdir(parents=True)
  write_image(str(root / "val" / "cat" / "ok.png"), (1, 2, 3), (8, 8))
  it = pipeline.train_iterator(f"folder:{root}", image_size=8, local_batch_size=2, seed=0)
  with pytest.raises(RuntimeError, match="could be decoded"):
    next(it)


def test_tfds_train_end_to_end(tfds_dir, no_network):
  name = "fcmae_tiny_tfds"
  assert sources.dataset_info(name, data_dir=tfds_dir) == DatasetInfo(4, TFDS_TRAIN, TFDS_VAL)
  kwargs = dict(
    data_dir=tfds_dir, image_size=8, local_batch_size=4, seed=5, augment="none", process_count=2
  )
  shards = []
  for index in range(2):
    it = pipeline.train_iterator(name, process_index=index, **kwargs)
    assert it.steps_per_epoch == 5  # 20 examples per process shard
    batches = take(it, 10)
    ids = [
      tfds_ids(np.concatenate([b["image"] for b in batches[e * 5 : (e + 1) * 5]]), "train")
      for e in range(2)
    ]
    labels = np.concatenate([b["label"] for b in batches[:5]])
    assert labels.tolist() == [i % 4 for i in ids[0]]
    assert sorted(ids[0]) == sorted(ids[1]) and len(set(ids[0])) == 20
    assert ids[0] != ids[1]  # reshuffled between epochs
    shards.append(set(ids[0]))
  assert shards[0].isdisjoint(shards[1]) and shards[0] | shards[1] == set(range(TFDS_TRAIN))


def test_tfds_resume_is_exact(tfds_dir):
  kwargs = dict(
    data_dir=tfds_dir,
    image_size=8,
    local_batch_size=4,
    seed=2,
    augment="pretrain",
    process_index=1,
    process_count=2,
  )
  fresh = take(pipeline.train_iterator("fcmae_tiny_tfds", **kwargs), 8)
  resumed = take(pipeline.train_iterator("fcmae_tiny_tfds", start_step=3, **kwargs), 5)
  assert_same_batches(resumed, fresh[3:8])  # crosses the epoch boundary at step 5
