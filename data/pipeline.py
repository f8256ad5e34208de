"""The training input pipeline: deterministic, resumable, multi-process tf.data iterators.

``train_iterator`` reads a source (``data/sources.py``), applies the augmentations of
``data/transforms.py`` and returns uint8 numpy batches of this process's share; the one exact
pass over an evaluation split is ``data/eval_pipeline.py``, which shares the skip accounting.

Determinism, resumption and multiple processes
    Folder/demo sources (the whole split is an in-memory array of images or
    file names): the training stream is the same whatever the number of
    processes. Epoch ``e`` visits the whole split in ONE global order,
    ``tf.random.experimental.index_shuffle`` keyed by (seed, e) only, which
    gives the split index at any position without materialising the
    permutation. With ``b = local_batch_size`` and ``G = b * process_count``,
    global batch ``k`` of an epoch is positions [k*G, (k+1)*G) of that order
    and process ``i`` reads [k*G + i*b, k*G + (i+1)*b); ``steps_per_epoch = N
    // G`` (the epoch's remainder is dropped globally). The example at
    position ``p`` is augmented with the stateless seed (f(seed), e * 2**32 +
    p), with no process index, so the concatenation over processes of their
    step-``k`` batches is bit-identical to the step-``k`` batch of one process
    with ``local_batch_size = G``. Global step ``s`` reads (epoch, step in
    epoch) = divmod(s, steps_per_epoch) and builds its own small tf.data
    pipeline (``Dataset.range(start_step, inf).interleave(step)``, a few steps
    in flight), so ``train_iterator(start_step=k)`` starts there in O(1)
    without touching anything before it, and there is no stall between
    epochs. Like every stream here, it does not depend on the tf.data
    parallelism or prefetch either.

    TFDS sources keep per-process shards: each process reads its
    ``tfds.split_for_jax_process`` shard in an order (TFDS file shuffle +
    shuffle buffer) that is a function of (seed, process, e), augments the
    example at position ``p`` of it with the seed (f(seed, process), e * 2**32
    + p), and ``steps_per_epoch`` = smallest shard // local_batch_size. Its
    stream is deterministic but DEPENDS on process_count. Resuming skips the
    still-encoded records before anything is decoded or augmented. TFDS
    epochs are separate ``builder.as_dataset`` pipelines (the file-shuffle
    seed of ``as_dataset`` is a Python int), chained in Python; the next one
    is opened in a background thread shortly before the current one ends.

Corrupt images
    Reading and decoding (``transforms.Transform.decode``: only the crop
    window of a JPEG, the whole image of other formats) run in their own
    ``map`` followed by ``Dataset.ignore_errors()``, so a record that cannot
    be read or decoded (garbage bytes, truncated JPEG/PNG, unknown format,
    missing file) is dropped in C++ instead of killing the iterator, at full
    C++ decoding speed. Augmentation runs in a *separate* map after that, so
    bugs in augmentation still raise. Every
    example carries its position; a missing position is exactly a skipped
    image. Skips are counted per iterator (``.num_skipped``) and per process
    (``skipped_images()``) and logged with ``logging.warning`` (with the file
    path for folder sources, the record position for TFDS); each process
    counts the corrupt images at the positions it owns.

    Folder/demo: the batch size never changes. A slot (epoch e, position p)
    whose image is corrupt is filled with the first decodable image at
    positions p+1, p+2, ... of the same epoch's global order (wrapping around;
    decoded in Python, eagerly, off the fast path) and augmented with the
    seed of slot p. The filler is a function of the global order only, so
    the stream stays invariant to the process count and resuming anywhere
    stays exact; the cost is that the filler image appears twice (more after
    a run of corrupt images) in that epoch, differently augmented. A lookahead of
    ``_MAX_FILL_TRIES`` consecutive undecodable images raises RuntimeError.

    TFDS: a skip shifts this process's batch composition for the rest of the
    epoch (the epoch's last, now partial, batch is dropped and the stream
    goes on with the next epoch, so every process still yields a full batch
    at every step): the stream stays deterministic, but ``start_step``
    resumes at the nominal (epoch, offset), so resuming after a corrupt image
    was passed is off by the skipped examples (exact when none was).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
from collections.abc import Iterator
from concurrent import futures

import numpy as np
import tensorflow as tf

from data import sources, transforms
from data.info import batch_spec  # noqa: F401 (re-exported)
from data.sources import (
  AUG_TAG,
  ORDER_TAG,
  Source,
  check_process,
  derived_seed,
  get_source,
  num_threads,
  tf_options,
)

logger = logging.getLogger(__name__)


def _in_background(fn, *args) -> futures.Future:
  """Runs fn(*args) in a short-lived worker thread; returns its future."""
  executor = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fcmae-data")
  try:
    return executor.submit(fn, *args)
  finally:
    executor.shutdown(wait=False)


# --------------------------------------------------------------------------
# Skip accounting
# --------------------------------------------------------------------------

_skipped_lock = threading.Lock()
_skipped_total = 0


def skipped_images() -> int:
  """Total corrupt/unreadable images skipped by all iterators of this process."""
  return _skipped_total


def _add_skipped(n: int) -> None:
  global _skipped_total
  with _skipped_lock:
    _skipped_total += n


def _example_seed(base: int, epoch, pos) -> tf.Tensor:
  """Stateless seed [2] int64 of the example at position `pos` of `epoch`."""
  epoch = tf.cast(epoch, tf.int64)
  return tf.stack([tf.constant(base, tf.int64), epoch * (1 << 32) + tf.cast(pos, tf.int64)])


# --------------------------------------------------------------------------
# Iterators
# --------------------------------------------------------------------------


class SkipTracker:
  """Turns gaps in the (epoch, position) sequence of decoded examples into skips.

  Positions of one epoch arrive in increasing order; any position missing
  from [first, stop) was dropped by ``ignore_errors``, i.e. was corrupt.
  """

  def __init__(self, describe):
    self.describe = describe  # describe(epoch, pos) -> str, for the warning
    self.count = 0
    self.epoch: int | None = None
    self.expected = 0

  def start(self, epoch: int | None, first_pos: int) -> None:
    self.epoch, self.expected = epoch, first_pos

  def _skip(self, lo: int, hi: int) -> None:
    if hi <= lo:
      return
    self.count += hi - lo
    _add_skipped(hi - lo)
    for p in range(lo, hi):
      logger.warning("Skipped corrupt or unreadable image: %s", self.describe(self.epoch, p))

  def see(self, pos: np.ndarray) -> None:
    """Positions (increasing) of the examples of one decoded batch."""
    if pos.size == 0:
      return
    prev = np.concatenate([[self.expected - 1], pos[:-1]])
    for i in np.flatnonzero(pos - prev > 1):
      self._skip(int(prev[i]) + 1, int(pos[i]))
    self.expected = int(pos[-1]) + 1

  def finish(self, stop: int) -> None:
    """End of the pass over positions [.., stop): a missing tail was skipped too."""
    self._skip(self.expected, stop)
    self.expected = stop


def transformed(
  source: Source, transform: transforms.Transform, ds: tf.data.Dataset, seed_of
) -> tf.data.Dataset:
  """(payload, label, pos) -> {'image': uint8 [S, S, 3], 'label', 'pos'}, the example at `pos`
  transformed with the seed `seed_of(pos)`. Images that cannot be read or decoded are dropped
  (by `ignore_errors` after the decoding map); errors in the augmentation that follows raise."""
  ds = ds.map(
    lambda payload, label, pos: (transform.decode(source.read(payload), seed_of(pos)), label, pos),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  ).ignore_errors()
  return ds.map(
    lambda image, label, pos: {
      "image": transform.finish(image, seed_of(pos)),
      "label": label,
      "pos": pos,
    },
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )


@dataclasses.dataclass
class _TrainPipeline:
  """Everything a training batch generator needs (and no reference back to
  the TrainIterator, so dropping the iterator frees its tf.data pipeline)."""

  source: Source
  split: str
  image_size: int
  batch_size: int  # local
  steps_per_epoch: int
  seed: int
  process_index: int
  process_count: int
  prefetch: int
  transform: transforms.Transform
  aug_base: int  # first word of every per-example stateless seed

  @property
  def num_skipped(self) -> int:
    raise NotImplementedError

  def batches(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """Full batches (image [B, S, S, 3], label [B]) from step `start_step` on."""
    raise NotImplementedError

  def numpy_iterator(self, ds: tf.data.Dataset):
    if self.prefetch:
      ds = ds.prefetch(self.prefetch)
    return ds.with_options(tf_options()).as_numpy_iterator()


# Folder/demo: how many positions past a corrupt one are tried to fill its slot.
_MAX_FILL_TRIES = 100
_MAX_STEPS = 1 << 62  # "infinite" (Dataset.range of global steps)


@dataclasses.dataclass
class _GlobalTrainPipeline(_TrainPipeline):
  """Folder/demo: one global order per epoch, process i reads its slice of each global batch."""

  order_base: int  # first word of every epoch's order key
  skipped: int = 0

  @property
  def num_skipped(self) -> int:
    return self.skipped

  def _first_position(self, step_in_epoch):
    """Position (in the epoch's global order) of this process's first example of a step."""
    return (
      step_in_epoch * self.batch_size * self.process_count + self.process_index * self.batch_size
    )

  def step_batches(self, start_step: int) -> tf.data.Dataset:
    """One element per global step >= start_step: this process's decodable examples of it.

    Elements: image uint8 [<=B, S, S, 3], label int32 [<=B], pos int64 [<=B]
    (positions in the epoch's order) and step int64 []; a step whose images
    are all corrupt yields an empty batch (never nothing: an all-corrupt
    split would otherwise spin forever inside tf.data).
    """
    source, split, b, spe = self.source, self.split, self.batch_size, self.steps_per_epoch
    payloads, labels = source._split_tensors(split)
    transform, aug_base, order_base = self.transform, self.aug_base, self.order_base
    size = self.image_size

    def step_batch(step):
      epoch, k = step // spe, step % spe
      pos = self._first_position(k) + tf.range(b, dtype=tf.int64)
      index = source.order_indices(split, order_base, epoch, pos)
      ds = tf.data.Dataset.from_tensor_slices((index, pos))
      ds = ds.map(lambda i, p: (tf.gather(payloads, i), tf.gather(labels, i), p))
      # Corrupt images are dropped here; _complete fills their slots in Python.
      ds = transformed(source, transform, ds, lambda p: _example_seed(aug_base, epoch, p))
      empty = tf.data.Dataset.from_tensors(
        {
          "image": tf.zeros([0, size, size, 3], tf.uint8),
          "label": tf.zeros([0], tf.int32),
          "pos": tf.zeros([0], tf.int64),
        }
      )
      ds = ds.batch(b).concatenate(empty).take(1)
      return ds.map(lambda batch: {**batch, "step": step})

    # A few steps in flight so the threads stay busy across step boundaries;
    # deterministic interleave of one-element datasets keeps the step order.
    cycle = max(2, min(16, -(-2 * num_threads() // b)))
    return tf.data.Dataset.range(start_step, _MAX_STEPS).interleave(
      step_batch, cycle_length=cycle, block_length=1, num_parallel_calls=cycle, deterministic=True
    )

  def batches(self, start_step):
    for step, batch in enumerate(self.numpy_iterator(self.step_batches(start_step)), start_step):
      assert int(batch["step"]) == step, (int(batch["step"]), step)
      yield self._complete(step, batch)

  def _complete(self, step: int, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The full batch of `step`: fills the slots of corrupt images (see _fill)."""
    b = self.batch_size
    if len(batch["label"]) == b:
      return {"image": batch["image"], "label": batch["label"]}  # the fast path
    epoch, k = divmod(step, self.steps_per_epoch)
    first = self._first_position(k)
    s = self.image_size
    image = np.empty((b, s, s, 3), np.uint8)  # [B, S, S, 3]
    label = np.empty((b,), np.int32)  # [B]
    present = np.zeros((b,), bool)
    slots = batch["pos"] - first
    image[slots], label[slots], present[slots] = batch["image"], batch["label"], True
    for j in np.flatnonzero(~present):
      image[j], label[j] = self._fill(epoch, first + int(j))
    return {"image": image, "label": label}

  def _fill(self, epoch: int, pos: int) -> tuple[np.ndarray, int]:
    """Counts the corrupt image at (epoch, pos) and returns its slot's replacement.

    The replacement is the first decodable image at positions pos+1, pos+2,
    ... of the epoch's global order (wrapping around), augmented with the
    seed of slot `pos`: a function of (seed, epoch, pos) only, whichever
    process owns the slot. Runs eagerly; corrupt images are rare.
    """
    source, split = self.source, self.split
    n = source.split_size(split)
    payloads, labels = source._split_tensors(split)
    own = int(source.order_indices(split, self.order_base, epoch, pos))
    self.skipped += 1
    _add_skipped(1)
    seed = _example_seed(self.aug_base, epoch, pos)
    for q in range(pos + 1, pos + 1 + min(n - 1, _MAX_FILL_TRIES)):
      index = int(source.order_indices(split, self.order_base, epoch, q % n))
      try:
        image = self.transform.decode(source.read(tf.gather(payloads, index)), seed)
      except tf.errors.OpError:
        continue
      logger.warning(
        "Skipped corrupt or unreadable image: %s (epoch %d, position %d); its slot "
        "is filled with the next decodable image of the epoch order, %s",
        source.example_name(split, own),
        epoch,
        pos,
        source.example_name(split, index),
      )
      return self.transform.finish(image, seed).numpy(), int(labels[index])
    raise RuntimeError(
      f"Skipped corrupt or unreadable image {source.example_name(split, own)} (epoch {epoch}, "
      f"position {pos}) and none of the next {min(n - 1, _MAX_FILL_TRIES)} images of the "
      f"epoch order of {source.name} split {split!r} could be decoded either: is the data "
      f"readable?"
    )


@dataclasses.dataclass
class _ShardedTrainPipeline(_TrainPipeline):
  """TFDS: each process reads its own shard (its stream depends on process_count)."""

  tracker: SkipTracker

  @property
  def num_skipped(self) -> int:
    return self.tracker.count

  def epoch_batches(self, epoch: int, start: int) -> tf.data.Dataset:
    """Batches of epoch `epoch` from position `start` of this process's shard.

    Elements: image uint8 [<=B, S, S, 3], label int32 [<=B], pos int64 [<=B],
    epoch int64 [<=B]; only the epoch's last batch can be short (after skips).
    """
    stop = self.steps_per_epoch * self.batch_size  # the epoch's remainder is dropped
    ds = self.source.records(
      self.split,
      self.process_index,
      self.process_count,
      epoch=epoch,
      seed=self.seed,
      start=start,
      stop=stop,
    )
    base = self.aug_base
    epoch = tf.cast(epoch, tf.int64)
    ds = transformed(self.source, self.transform, ds, lambda p: _example_seed(base, epoch, p))
    return ds.map(lambda example: {**example, "epoch": epoch}).batch(self.batch_size)

  def stream(self, first_epoch: int, first_start: int) -> Iterator[dict[str, np.ndarray]]:
    """All batches (incl. short epoch tails) from (first_epoch, first_start) on."""

    def open_epoch(epoch: int, start: int):
      batches = self.numpy_iterator(self.epoch_batches(epoch, start))
      # tf.data starts threads and instantiates functions on the first GetNext:
      # pull the first batch here so a background open leaves the epoch ready.
      first = next(batches, None)
      return itertools.chain([] if first is None else [first], batches)

    epoch, upcoming = first_epoch, None
    remaining = self.steps_per_epoch - first_start // self.batch_size
    while True:
      batches = upcoming.result() if upcoming else open_epoch(epoch, first_start)
      upcoming = None
      for batch in batches:
        remaining -= 1
        if upcoming is None and remaining <= _TFDS_PREBUILD_AHEAD:
          upcoming = _in_background(open_epoch, epoch + 1, 0)
        yield batch
      epoch, remaining = epoch + 1, self.steps_per_epoch

  def batches(self, start_step):
    epoch, offset = divmod(start_step, self.steps_per_epoch)
    stop = self.steps_per_epoch * self.batch_size
    tracker = self.tracker
    tracker.start(epoch, offset * self.batch_size)
    for batch in self.stream(epoch, offset * self.batch_size):
      batch_epoch = int(batch.pop("epoch")[0])
      while batch_epoch > tracker.epoch:  # entered a new epoch: close the old one
        tracker.finish(stop)
        tracker.start(tracker.epoch + 1, 0)
      tracker.see(batch.pop("pos"))
      if len(batch["label"]) == self.batch_size:
        yield batch  # image uint8 [B, S, S, 3], label int32 [B]


# Open the next TFDS epoch in the background when this many batches are left
# (not earlier: an opened TFDS pipeline also fills its shuffle buffer).
_TFDS_PREBUILD_AHEAD = 256


class TrainIterator:
  """Infinite iterator of training batches; see ``train_iterator``.

  Attributes:
    steps_per_epoch: batches per epoch, the same on every process (folder/demo:
      split size // (local_batch_size * process_count); TFDS: smallest
      process shard // local_batch_size).
    step: index of the next batch to be returned; ``epoch`` = step // steps_per_epoch.
    num_skipped: corrupt/unreadable images skipped so far by this iterator
      (folder/demo: at the positions this process owns, counted when their
      batch reaches Python; TFDS: counted when the consumer passes their
      position, so it can lag by a batch, or by an epoch tail).
  """

  def __init__(
    self,
    source: Source,
    *,
    split: str,
    image_size: int,
    local_batch_size: int,
    seed: int,
    start_step: int,
    process_index: int,
    process_count: int,
    augment: str,
    augment_options: dict | None,
    prefetch: int,
  ):
    check_process(process_index, process_count)
    if local_batch_size < 1 or start_step < 0:
      raise ValueError(f"bad local_batch_size={local_batch_size} / start_step={start_step}")
    common = dict(
      source=source,
      split=split,
      image_size=image_size,
      batch_size=local_batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      prefetch=prefetch,
      transform=transforms.train_transform(
        augment, image_size, augment_options, encoded=source.encoded
      ),
    )
    if source.global_order:
      size = source.split_size(split)
      self.steps_per_epoch = size // (local_batch_size * process_count)
      if self.steps_per_epoch == 0:
        raise sources.DatasetError(
          f"{source.name} split {split!r} has {size} examples, fewer than one "
          f"global batch (local_batch_size={local_batch_size} x {process_count} "
          f"processes)"
        )
      self._pipeline: _TrainPipeline = _GlobalTrainPipeline(
        **common,
        steps_per_epoch=self.steps_per_epoch,
        aug_base=derived_seed(seed, AUG_TAG),
        order_base=derived_seed(seed, ORDER_TAG),
      )
    else:
      min_shard = min(source.shard_size(split, i, process_count) for i in range(process_count))
      self.steps_per_epoch = min_shard // local_batch_size
      if self.steps_per_epoch == 0:
        raise sources.DatasetError(
          f"{source.name} split {split!r}: the smallest per-process shard has "
          f"{min_shard} examples, fewer than local_batch_size={local_batch_size}"
        )
      self._pipeline = _ShardedTrainPipeline(
        **common,
        steps_per_epoch=self.steps_per_epoch,
        aug_base=derived_seed(seed, process_index, AUG_TAG),
        tracker=SkipTracker(
          lambda epoch, pos: source.describe(split, process_index, process_count, epoch, pos, seed)
        ),
      )
    self.batch_size = local_batch_size
    self.step = start_step
    self._batches = self._pipeline.batches(start_step)

  @property
  def epoch(self) -> int:
    """Epoch of the next batch."""
    return self.step // self.steps_per_epoch

  @property
  def num_skipped(self) -> int:
    return self._pipeline.num_skipped

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._batches)
    self.step += 1
    return batch

  def close(self) -> None:
    """Stops the pipeline now (also happens when the iterator is garbage collected)."""
    self._batches.close()


def train_iterator(
  name: str = "imagenet2012",
  *,
  data_dir: str | None = None,
  image_size: int,
  local_batch_size: int,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  augment: str = "pretrain",
  augment_options: dict | None = None,
  split: str = "train",
  prefetch: int = 2,
) -> TrainIterator:
  """Infinite, deterministic, resumable iterator of this process's training batches.

  Yields dicts of numpy arrays: ``image`` uint8 [local_batch_size,
  image_size, image_size, 3] (pixels; normalized on the device) and ``label`` int32
  [local_batch_size]. Folder/demo: each epoch visits the whole split in one
  order drawn from (seed, epoch), global batch k is the next
  local_batch_size * process_count examples of it and this process gets
  its process_index-th slice, so the global batches (and their
  augmentations) do not depend on process_count; the epoch's remainder is
  dropped. TFDS: each epoch reshuffles this process's shard from (seed,
  process_index, epoch) and drops its remainder (the stream depends on
  process_count). ``start_step=k`` yields exactly batches k, k+1, ... of
  the fresh stream without decoding the first k batches (see the module
  docstring for corrupt images).

  augment: 'pretrain' (FCMAE: RandomResizedCrop(0.2-1) + flip), 'finetune'
  (RandomResizedCrop(0.08-1) + flip + RandAugment; configure with
  augment_options={'randaugment': 'rand-m9-mstd0.5-inc1' or ''}; random
  erasing follows on the device) or 'none' (eval-style resize + center crop).
  The returned iterator also exposes ``num_skipped``, ``steps_per_epoch``,
  ``step`` and ``epoch``.
  """
  return TrainIterator(
    get_source(name, data_dir),
    split=split,
    image_size=image_size,
    local_batch_size=local_batch_size,
    seed=seed,
    start_step=start_step,
    process_index=process_index,
    process_count=process_count,
    augment=augment,
    augment_options=augment_options,
    prefetch=prefetch,
  )
