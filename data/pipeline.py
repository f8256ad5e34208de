"""The training input pipeline: deterministic, resumable, multi-process tf.data iterators.

``train_iterator`` reads a source (``data/sources.py``), applies the augmentations of
``data/transforms.py`` and returns uint8 numpy batches of this process's share, from any step on.
Folder/demo sources read one global order per epoch, the same stream whatever the number of
processes (``data/global_stream.py``); TFDS sources read per-process shards
(``data/sharded_stream.py``). Corrupt images are dropped and counted (``data/skips.py``); the one
exact pass over an evaluation split is ``data/eval_pipeline.py``, which shares that accounting.
"""

from __future__ import annotations

import numpy as np

from data import transforms
from data.global_stream import GlobalTrainStream
from data.info import DatasetError
from data.sharded_stream import ShardedTrainStream
from data.skips import SkipTracker
from data.sources import AUG_TAG, ORDER_TAG, Source, check_process, derived_seed, get_source
from data.stream import TrainStream


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
    channels: int = 3,
  ):
    check_process(process_index, process_count)
    if local_batch_size < 1 or start_step < 0:
      raise ValueError(f"bad local_batch_size={local_batch_size} / start_step={start_step}")
    common = dict(
      source=source,
      split=split,
      image_size=image_size,
      channels=channels,
      batch_size=local_batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      prefetch=prefetch,
      transform=transforms.train_transform(
        augment, image_size, augment_options, encoded=source.encoded, channels=channels
      ),
    )
    if source.global_order:
      size = source.split_size(split)
      self.steps_per_epoch = size // (local_batch_size * process_count)
      if self.steps_per_epoch == 0:
        raise DatasetError(
          f"{source.name} split {split!r} has {size} examples, fewer than one "
          f"global batch (local_batch_size={local_batch_size} x {process_count} "
          f"processes)"
        )
      self._pipeline: TrainStream = GlobalTrainStream(
        **common,
        steps_per_epoch=self.steps_per_epoch,
        aug_base=derived_seed(seed, AUG_TAG),
        order_base=derived_seed(seed, ORDER_TAG),
      )
    else:
      min_shard = min(source.shard_size(split, i, process_count) for i in range(process_count))
      self.steps_per_epoch = min_shard // local_batch_size
      if self.steps_per_epoch == 0:
        raise DatasetError(
          f"{source.name} split {split!r}: the smallest per-process shard has "
          f"{min_shard} examples, fewer than local_batch_size={local_batch_size}"
        )
      self._pipeline = ShardedTrainStream(
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
  channels: int = 3,
) -> TrainIterator:
  """Infinite, deterministic, resumable iterator of this process's training batches.

  Yields dicts of numpy arrays: ``image`` uint8 [local_batch_size,
  image_size, image_size, channels] (pixels; normalized on the device) and ``label`` int32
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
    channels=channels,
  )
