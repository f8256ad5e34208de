"""One exact pass over an evaluation split: every example once on any number of processes,
padded to equal batch counts (``mask`` 0 on padding), resize + center crop on the host, uint8 to
the device. Corrupt images become padding and are counted as in training (``data/skips.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from data import transforms
from data.skips import SkipTracker, transformed
from data.sources import Source, check_process, get_source, tf_options


class EvalIterator:
  """One exact pass over an eval split; see ``eval_iterator``.

  ``len(it)`` is the number of batches, identical on every process.
  ``num_skipped`` counts corrupt images (their slots become padding).
  """

  def __init__(
    self,
    source: Source,
    *,
    split: str,
    image_size: int,
    local_batch_size: int,
    process_index: int,
    process_count: int,
    crop_pct: float,
    prefetch: int = 2,
    channels: int = 3,
  ):
    check_process(process_index, process_count)
    if local_batch_size < 1:
      raise ValueError(f"bad local_batch_size={local_batch_size}")
    if not 0.0 < crop_pct <= 1.0:
      raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    self.source, self.split, self.batch_size = source, split, local_batch_size
    self.process_index, self.process_count = process_index, process_count
    self.image_size, self.crop_pct, self.prefetch = image_size, crop_pct, prefetch
    self.channels = channels
    shard_sizes = [source.shard_size(split, i, process_count) for i in range(process_count)]
    self.shard_size = shard_sizes[process_index]
    self.num_batches = -(-max(shard_sizes) // local_batch_size)  # ceil
    self._tracker = SkipTracker(
      lambda epoch, pos: source.describe(split, process_index, process_count, None, pos, 0)
    )
    self._batches = self._generate()

  @property
  def num_skipped(self) -> int:
    return self._tracker.count

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> EvalIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._batches)

  def _generate(self) -> Iterator[dict[str, np.ndarray]]:
    ds = self.source.records(
      self.split, self.process_index, self.process_count, epoch=None, seed=0, start=0, stop=None
    )
    transform = transforms.eval_transform(
      self.image_size, float(self.crop_pct), encoded=self.source.encoded, channels=self.channels
    )
    ds = transformed(self.source, transform, ds, lambda pos: tf.zeros([2], tf.int64))
    ds = ds.batch(self.batch_size)
    if self.prefetch:
      ds = ds.prefetch(self.prefetch)
    ds = ds.with_options(tf_options())

    self._tracker.start(None, 0)
    emitted = 0
    for batch in ds.as_numpy_iterator():
      self._tracker.see(batch.pop("pos"))
      yield self._pad(batch)
      emitted += 1
    self._tracker.finish(self.shard_size)
    for _ in range(self.num_batches - emitted):  # every process yields num_batches
      yield self._pad(None)

  def _pad(self, batch: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Pads a (possibly partial or absent) batch to batch_size: zero images, mask 0."""
    n, b, s = (0 if batch is None else len(batch["label"])), self.batch_size, self.image_size
    out = {
      "image": np.zeros((b, s, s, self.channels), np.uint8),  # [B, S, S, C]
      "label": np.zeros((b,), np.int32),  # [B]
      "mask": np.zeros((b,), np.float32),
    }  # [B]
    if n:
      out["image"][:n] = batch["image"]
      out["label"][:n] = batch["label"]
    out["mask"][:n] = 1.0
    return out


def eval_iterator(
  name: str = "imagenet2012",
  *,
  data_dir: str | None = None,
  image_size: int,
  local_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  split: str = "validation",
  crop_pct: float = 0.875,
  channels: int = 3,
) -> EvalIterator:
  """One pass over this process's shard of an eval split, padded for exactness.

  Every process yields the same number of batches, ceil(max shard size /
  local_batch_size), computed from all shard sizes; the last ones are padded
  with zero images. Batches: ``image`` uint8 [B, S, S, C], ``label`` int32
  [B], ``mask`` float32 [B] (1 = real example, 0 = padding). Preprocessing:
  shorter side -> int(image_size / crop_pct) bicubic + center crop (squash
  resize to image_size x image_size when image_size >= 384).
  """
  return EvalIterator(
    get_source(name, data_dir),
    split=split,
    image_size=image_size,
    local_batch_size=local_batch_size,
    process_index=process_index,
    process_count=process_count,
    crop_pct=crop_pct,
    channels=channels,
  )
