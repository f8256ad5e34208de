"""Corrupt images: where they are dropped and how they are counted.

Reading and decoding (``transforms.Transform.decode``: only the crop window of a JPEG, the whole
image of other formats) run in their own ``map`` followed by ``Dataset.ignore_errors()``, so a
record that cannot be read or decoded (garbage bytes, truncated JPEG/PNG, unknown format, missing
file) is dropped in C++ instead of killing the iterator, at full C++ decoding speed.
Augmentation runs in a *separate* map after that, so bugs in augmentation still raise. Every
example carries its position; a missing position is exactly a skipped image. Skips are counted
per iterator (``.num_skipped``) and per process (``skipped_images()``) and logged with
``logging.warning`` (with the file path for folder sources, the record position for TFDS); each
process counts the corrupt images at the positions it owns. What a stream does with the hole
is its own: ``data/global_stream.py`` fills it, ``data/sharded_stream.py`` closes it up.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import tensorflow as tf

from data import transforms
from data.sources import Source

logger = logging.getLogger(__name__)

_skipped_lock = threading.Lock()
_skipped_total = 0


def skipped_images() -> int:
  """Total corrupt/unreadable images skipped by all iterators of this process."""
  return _skipped_total


def add_skipped(n: int) -> None:
  global _skipped_total
  with _skipped_lock:
    _skipped_total += n


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
    add_skipped(hi - lo)
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
