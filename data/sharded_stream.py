"""The training stream of TFDS sources: per-process shards.

Each process reads its ``tfds.split_for_jax_process`` shard in an order (TFDS file shuffle +
shuffle buffer) that is a function of (seed, process, e), augments the example at position ``p``
of it with the seed (f(seed, process), e * 2**32 + p), and ``steps_per_epoch`` = smallest shard
// local_batch_size. Its stream is deterministic but DEPENDS on process_count. Resuming skips the
still-encoded records before anything is decoded or augmented. TFDS epochs are separate
``builder.as_dataset`` pipelines (the file-shuffle seed of ``as_dataset`` is a Python int),
chained in Python; the next one is opened in a background thread shortly before the current one
ends.

Corrupt images (``data/skips.py``): a skip shifts this process's batch composition for the rest
of the epoch (the epoch's last, now partial, batch is dropped and the stream goes on with the
next epoch, so every process still yields a full batch at every step): the stream stays
deterministic, but a resume starts at the nominal (epoch, offset), so resuming after a corrupt
image was passed is off by the skipped examples (exact when none was).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from concurrent import futures

import numpy as np
import tensorflow as tf

from data.skips import SkipTracker, transformed
from data.stream import TrainStream, example_seed

# Open the next TFDS epoch in the background when this many batches are left
# (not earlier: an opened TFDS pipeline also fills its shuffle buffer).
_PREBUILD_AHEAD = 256


def _in_background(fn, *args) -> futures.Future:
  """Runs fn(*args) in a short-lived worker thread; returns its future."""
  executor = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fcmae-data")
  try:
    return executor.submit(fn, *args)
  finally:
    executor.shutdown(wait=False)


@dataclasses.dataclass
class ShardedTrainStream(TrainStream):
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
    ds = transformed(self.source, self.transform, ds, lambda p: example_seed(base, epoch, p))
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
        if upcoming is None and remaining <= _PREBUILD_AHEAD:
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
