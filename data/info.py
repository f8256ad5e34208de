"""What a run needs to know of its data without reading it or importing TensorFlow: a dataset's
sizes, the layout of a batch, and the error for a dataset that cannot be used. The train step
(benchmarks/train_step.py, --compile_only) is built from these alone."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from core.errors import UserError


class DatasetError(UserError, ValueError):
  """A dataset that cannot be read as asked: unknown name, a folder without the expected layout."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train_examples: int  # global (all processes)
  num_eval_examples: int  # global


# The normalization every ConvNeXt V2 checkpoint was trained with (on the device: data/on_device.py).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ImageNet-1K (ILSVRC 2012): what --compile_only assumes, since it reads no data.
IMAGENET_1K = DatasetInfo(num_classes=1000, num_train_examples=1_281_167, num_eval_examples=50_000)


def batch_spec(
  batch_size: int, image_size: int, channels: int = 3
) -> dict[str, tuple[tuple[int, ...], Any]]:
  """The layout of a training batch: {'image': ((B, S, S, C), uint8), 'label': ((B,), int32)}."""
  return {
    "image": ((batch_size, image_size, image_size, channels), np.uint8),
    "label": ((batch_size,), np.int32),
  }


def abstract_batch(config, batch_sharding, batch_size: int | None = None) -> dict:
  """A global batch of the config as sharded ShapeDtypeStructs (batch_spec's layout)."""
  import jax

  spec = batch_spec(batch_size or config.batch_size, config.data.image_size, config.model.in_chans)
  return {
    name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
    for name, (shape, dtype) in spec.items()
  }
