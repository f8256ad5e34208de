"""The per-channel normalisation statistics of a run's pixels: (x / 255 - mean) / std on the
device (data/on_device.py).

Where they come from, in this order: the config (``data.mean`` / ``data.std``, one value per
channel); ImageNet's, for 3 channels; or computed over the pixels of the first
``data.stats_images`` images of the training data (in its natural order: for an unlabeled
folder, the first files of its list) and written into the workdir (``STATS_NAME``), so that a
resume uses the very same numbers without reading the images again.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from core import storage
from data.info import IMAGENET_MEAN, IMAGENET_STD

STATS_NAME = "normalization.json"  # in the workdir


@dataclasses.dataclass(frozen=True)
class Stats:
  mean: tuple[float, ...]
  std: tuple[float, ...]
  origin: str  # for the log line: where the numbers came from


def given(config) -> Stats | None:
  """The config's statistics, or ImageNet's for 3 channels; None when they must be computed."""
  mean, std = _values(config.data.mean), _values(config.data.std)
  channels = config.model.in_chans
  if mean or std:
    return Stats(
      mean or (IMAGENET_MEAN if channels == 3 else (0.5,) * channels),
      std or (IMAGENET_STD if channels == 3 else (0.25,) * channels),
      "from the config (data.mean, data.std)",
    )
  if channels == 3:
    return Stats(IMAGENET_MEAN, IMAGENET_STD, "ImageNet's")
  return None


def _values(text: str) -> tuple[float, ...]:
  """'A,B,C' -> (A, B, C) (configs/schema.py has checked the text)."""
  return tuple(float(x) for x in text.split(",")) if text.strip() else ()


def placeholder(channels: int) -> Stats:
  """Stand-ins of the right length where no data is read (--compile_only): the compiled
  program's cost does not depend on their values."""
  return Stats((0.5,) * channels, (0.25,) * channels, "placeholders (no data read)")


def path(workdir: str) -> str:
  return f"{workdir.rstrip('/')}/{STATS_NAME}"


def read(workdir: str) -> Stats | None:
  p = path(workdir)
  if not storage.exists(p):
    return None
  kept = json.loads(storage.read_text(p))
  return Stats(tuple(kept["mean"]), tuple(kept["std"]), f"read from {p}")


def write(workdir: str, stats: Stats, images: int, data: str) -> None:
  record = {"mean": list(stats.mean), "std": list(stats.std), "images": images, "data": data}
  storage.write_text(path(workdir), json.dumps(record, indent=1) + "\n")


def compute(source, split: str, channels: int, num: int) -> tuple[Stats, int]:
  """(statistics over every pixel of the first `num` decodable images of `split`, how many
  images were read). Undecodable images are passed over, as training skips them."""
  from data import augment

  records = source.records(split, 0, 1, epoch=None, seed=0, start=0, stop=None)
  if source.encoded:
    decode = lambda payload: augment.decode(source.read(payload), channels)
  else:
    decode = lambda payload: payload
  images = records.map(lambda payload, label, pos: decode(payload)).ignore_errors().take(num)
  total = np.zeros(channels)
  squares = np.zeros(channels)
  pixels, count = 0, 0
  for image in images.as_numpy_iterator():
    x = image.reshape(-1, channels).astype(np.float64) / 255.0
    total += x.sum(0)
    squares += np.square(x).sum(0)
    pixels += len(x)
    count += 1
  if not count:
    return placeholder(channels), 0
  mean = total / pixels
  std = np.sqrt(np.maximum(squares / pixels - np.square(mean), 0.0))
  std = np.maximum(std, 1e-3)  # a constant channel: no division by zero
  return (
    Stats(
      tuple(round(float(m), 6) for m in mean),
      tuple(round(float(s), 6) for s in std),
      f"computed over the first {count} images",
    ),
    count,
  )
