"""What every training stream shares: its settings, and the seed of each example.

A stream (``data/global_stream.py`` for folder/demo sources, ``data/sharded_stream.py`` for TFDS)
yields this process's full batches from any global step on; ``data/pipeline.py`` picks one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from data import transforms
from data.sources import Source, tf_options


def example_seed(base: int, epoch, pos) -> tf.Tensor:
  """Stateless seed [2] int64 of the example at position `pos` of `epoch`."""
  epoch = tf.cast(epoch, tf.int64)
  return tf.stack([tf.constant(base, tf.int64), epoch * (1 << 32) + tf.cast(pos, tf.int64)])


@dataclasses.dataclass
class TrainStream:
  """Everything a training batch generator needs (and no reference back to
  the TrainIterator, so dropping the iterator frees its tf.data pipeline)."""

  source: Source
  split: str
  image_size: int
  channels: int
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
    """Full batches (image [B, S, S, C], label [B]) from step `start_step` on."""
    raise NotImplementedError

  def numpy_iterator(self, ds: tf.data.Dataset):
    if self.prefetch:
      ds = ds.prefetch(self.prefetch)
    return ds.with_options(tf_options()).as_numpy_iterator()
