"""What a run fixes about its data before its first step, and keeps in its workdir: the file list
of an unlabeled folder (data/folders.py) and the normalisation statistics
(data/normalization.py). A resume, and every host of a multi-host run, reads both from the
workdir; the folder or bucket is listed once, by process 0.

Data that cannot be trained on is refused here, before anything is written (DatasetError, one
line, exit status 2): a folder without image files, a folder whose first images all fail to
decode, .npy arrays whose channel count is not model.in_chans.
"""

from __future__ import annotations

import dataclasses
import io

import jax
import numpy as np

from core import storage
from core.logs import say
from data import folders, normalization
from data.info import DatasetError, DatasetInfo

# An unlabeled folder is refused when none of its first this many files can be decoded.
READABLE_TRIES = 32


@dataclasses.dataclass(frozen=True)
class Prepared:
  info: DatasetInfo
  stats: normalization.Stats


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _npy_channels(data: bytes) -> tuple[int, ...]:
  """The shape in a .npy file's header (read without the array)."""
  f = io.BytesIO(data)
  version = np.lib.format.read_magic(f)
  read = (
    np.lib.format.read_array_header_1_0
    if version == (1, 0)
    else np.lib.format.read_array_header_2_0
  )
  return read(f)[0]


def _check_images(root: str, files, channels: int) -> None:
  """Refuses a folder whose .npy arrays have another channel count, that has no .npy array
  when `channels` is neither 1 nor 3, or whose first READABLE_TRIES files all fail to decode."""
  from data import augment  # TensorFlow: only where images are read

  arrays = [f for f in files if f.lower().endswith(".npy")]
  if channels not in (1, 3) and not arrays:
    raise DatasetError(
      f"folder:{root} holds no .npy arrays, and model.in_chans={channels}: images with other than "
      "1 or 3 channels are read from .npy files (H, W, C)"
    )
  if arrays:
    first = folders.join(root, arrays[0])
    try:
      shape = _npy_channels(storage.read_bytes(first))
    except (OSError, ValueError) as e:
      shape = f"unreadable ({e})"
    if not (isinstance(shape, tuple) and len(shape) in (2, 3)):
      raise DatasetError(f"{first}: a .npy image must be an (H, W, C) array, it holds {shape}")
    found = 1 if len(shape) == 2 else shape[2]
    if found != channels:
      raise DatasetError(
        f"{first} has {found} channels (shape {shape}), but model.in_chans={channels}: set "
        f"--config.model.in_chans={found}, or convert the arrays"
      )
  for relative in files[:READABLE_TRIES]:
    try:
      augment.decode(storage.read_bytes(folders.join(root, relative)), channels)
      return
    except Exception:  # noqa: BLE001 (any failure to read or decode: try the next)
      continue
  raise DatasetError(
    f"folder:{root}: none of its first {min(len(files), READABLE_TRIES)} image files could be "
    f"read as an image of {channels} channels (e.g. {folders.join(root, files[0])})"
  )


def _file_list(config, workdir: str | None) -> None:
  """Fixes the images of an unlabeled folder: the workdir's list, else the folder listed and
  checked by process 0 and the list written into the workdir for every process to read."""
  root = folders.root_of(config.data.name)
  if folders.is_labeled(root):
    return
  kept = folders.read_list(workdir) if workdir else None
  if kept is not None:
    say(f"Data: {len(kept)} images of folder:{root}, from {folders.list_path(workdir)}.")
  else:
    if jax.process_index() == 0 or not workdir:
      kept = folders.image_files(root)  # lists the folder (DatasetError when it holds none)
      _check_images(root, kept, config.model.in_chans)
      if workdir:
        path = folders.write_list(workdir, kept)
        say(
          f"Data: {len(kept)} images under folder:{root} (unlabeled, any depth); their list is "
          f"written to {path} and read from there on resume."
        )
    if workdir:
      _sync("file list written")
      kept = folders.read_list(workdir)
  folders.use_list(root, kept)


def prepare(config, workdir: str | None) -> Prepared:
  """The dataset's sizes and the normalisation statistics of `config`'s run in `workdir`
  (None: nothing is written, and the statistics are computed when they must be)."""
  from data import sources  # TensorFlow: only where data is read

  name = config.data.name
  if name.startswith("folder:"):
    _file_list(config, workdir)
    sources.get_source.cache_clear()  # a source made before read the folder, not the list
  info = sources.dataset_info(name, config.data.data_dir or None)
  stats = normalization.given(config) or (workdir and normalization.read(workdir))
  computed = 0
  if not stats:
    source = sources.get_source(name, config.data.data_dir or None)
    stats, computed = normalization.compute(
      source, "train", config.model.in_chans, config.data.stats_images
    )
  if computed and workdir and jax.process_index() == 0:
    normalization.write(workdir, stats, computed, name)
    stats = dataclasses.replace(
      stats, origin=f"{stats.origin}, written to {normalization.path(workdir)}"
    )
  say(
    f"Data: normalisation mean {_shown(stats.mean)}, std {_shown(stats.std)} "
    f"({config.model.in_chans} channels; {stats.origin})."
  )
  return Prepared(info, stats)


def _shown(values) -> str:
  return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
