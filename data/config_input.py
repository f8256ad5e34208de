"""The input of a run config: its training stream and the length of its epochs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax

from data.info import DatasetError, DatasetInfo


def train_stream(config, augment: str, **augment_options) -> Callable[[int], Iterator[dict]]:
  """The Task.train_batches of a config: this process's share of each global batch, from step
  `start_step` on, with RandomResizedCrop(config.data.crop_scale_min..1) and `augment`."""

  def batches(start_step):
    from data import pipeline  # TensorFlow: only where batches are read

    return pipeline.train_iterator(
      config.data.name,
      data_dir=config.data.data_dir or None,
      image_size=config.data.image_size,
      local_batch_size=config.batch_size // jax.process_count(),
      seed=config.seed,
      start_step=start_step,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      augment=augment,
      augment_options={"scale": (config.data.crop_scale_min, 1.0), **augment_options},
      channels=config.model.in_chans,
    )

  return batches


def steps_per_epoch(config, info: DatasetInfo, *, training: bool = True) -> int:
  """Global steps in one pass over the training split (at least 1); a batch larger than the
  split is an error when training."""
  steps = info.num_train_examples // config.batch_size
  if steps < 1 and training:
    raise DatasetError(
      f"batch_size {config.batch_size} is larger than the "
      f"{info.num_train_examples} training images of "
      f"{config.data.name!r}."
    )
  return max(steps, 1)


def skipped_images() -> int:
  """Images this process skipped as unreadable so far (Task.skipped_images)."""
  from data import skips

  return skips.skipped_images()
