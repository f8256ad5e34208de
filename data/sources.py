"""Where images come from: TFDS datasets, image folders and the built-in demo set.

Selected by name:

* a TFDS name (default ``'imagenet2012'``), read from an already prepared ``data_dir``
  (never downloaded here; the error says how to prepare it);
* ``'folder:PATH'`` (local or gs://): ``PATH/train/<class>/<image>`` and
  ``PATH/val/<class>/<image>``, or every image under PATH, unlabeled (``data/folders.py``);
* ``'demo'``: the built-in synthetic set (``data/demo.py``), no files, no network.

A source says how big its splits and per-process shards are and yields still-encoded records
(payload, label, position); ``read`` turns a payload into the image file's bytes (``encoded``
sources) or its uint8 pixels (the demo data). Reading or decoding may fail, which the pipeline
(``data/pipeline.py``) counts as a corrupt image.
"""

from __future__ import annotations

import functools
import os
import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from core import storage
from core.errors import UserError
from data import demo, folders
from data.info import DatasetError, DatasetInfo

# TF must never grab an accelerator: JAX owns it.
try:
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # TF runtime already initialised; nothing we can do then.
  pass

# Records held in the shuffle buffer after TFDS's file-level shuffle (encoded
# images, ~110 KB each for ImageNet -> ~1.1 GB).
TFDS_SHUFFLE_BUFFER = 10_000
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "eval": "validation"}


def num_threads() -> int:
  """Threads for each tf.data pipeline (env FCMAE_DATA_THREADS overrides)."""
  env = os.environ.get("FCMAE_DATA_THREADS")
  if env:
    return max(1, int(env))
  return max(1, min(os.cpu_count() or 1, 16))


def tf_options() -> tf.data.Options:
  """Deterministic order, a private bounded threadpool, single-threaded ops."""
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = num_threads()
  options.threading.max_intra_op_parallelism = 1
  return options


# --------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------

ORDER_TAG, AUG_TAG = 0x0D3E, 0xA06


def derived_seed(seed: int, *tags: int, bits: int = 63) -> int:
  """A well-mixed non-negative int of `bits` bits from (seed, *tags).

  Per-process TFDS seeds pass the process index as the first tag; the global
  folder/demo seeds pass none.
  """
  seed = int(seed) % (1 << 64)  # SeedSequence wants non-negative entropy
  ss = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, *tags])
  return int(ss.generate_state(1, np.uint64)[0] >> (64 - bits))


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------


def check_process(process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process_index/process_count: {process_index}/{process_count}")


class Source:
  """A split-able collection of (payload, label) with a payload reader.

  ``records`` returns a dataset of (payload, label int32, pos int64) with the
  positions [start, stop) of this process's shard in an epoch's visiting
  order (natural order for eval, epoch=None); ``read`` turns a payload into
  a uint8 [H, W, 3] image and may fail, which counts as a corrupt image.
  """

  name: str
  num_classes: int
  # True: the training stream reads one global order of the whole split
  # (data/global_stream.py); False: per-process shards (data/sharded_stream.py).
  global_order = False

  def split_size(self, split: str) -> int:
    raise NotImplementedError

  def shard_size(self, split: str, index: int, count: int) -> int:
    raise NotImplementedError

  def records(
    self, split: str, index: int, count: int, *, epoch, seed: int, start, stop: int | None
  ) -> tf.data.Dataset:
    raise NotImplementedError

  # True: `read` gives an image file's bytes; False: uint8 pixels [H, W, 3].
  encoded = True

  def read(self, payload: tf.Tensor) -> tf.Tensor:
    raise NotImplementedError

  def describe(
    self, split: str, index: int, count: int, epoch: int | None, pos: int, seed: int
  ) -> str:
    """Human-readable name of the example at `pos` of `epoch` (for skip warnings)."""
    where = "" if epoch is None else f" of epoch {epoch}"
    return f"record #{pos}{where} of {self.name} split {split!r} (process shard {index}/{count})"


class _ArraySource(Source):
  """folder/demo: payloads in memory; random access by split index.

  Training reads one global order per epoch (``order_indices``); eval reads
  per-process shards by striding (``records`` with epoch=None).
  """

  global_order = True

  def _read_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(payloads [N, ...], labels int32 [N]) of a whole split in canonical order (numpy)."""
    raise NotImplementedError

  @functools.lru_cache(maxsize=8)
  def _split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's arrays; 'train[:N]' is a fixed subset of N examples drawn at random (the
    first N of the canonical order would be the first classes only), in canonical order."""
    found = re.fullmatch(r"(\w+)\[:(\d+)\]", split)
    payloads, labels = self._read_split(found.group(1) if found else split)
    if found and int(found.group(2)) < len(labels):
      keep = np.sort(np.random.default_rng(0).permutation(len(labels))[: int(found.group(2))])
      payloads, labels = payloads[keep], labels[keep]
    return payloads, labels

  @functools.lru_cache(maxsize=8)
  def _split_tensors(self, split: str) -> tuple[tf.Tensor, tf.Tensor]:
    """Eager (payloads, labels) tensors; captured by the pipelines that use them."""
    payloads, labels = self._split_arrays(split)
    if payloads.dtype == object:
      payloads = payloads.astype(str)
    with tf.init_scope():  # eager even when first called while tracing (cached!)
      return tf.constant(payloads), tf.constant(labels)

  def split_size(self, split):
    return len(self._split_arrays(split)[1])

  def shard_size(self, split, index, count):
    return len(range(index, self.split_size(split), count))

  def order_indices(self, split: str, order_base: int, epoch, pos) -> tf.Tensor:
    """Split indices (int64, shape of `pos`) at positions `pos` of epoch `epoch`'s global order.

    The order is a pseudorandom permutation of [0, N) keyed by (order_base,
    epoch) only, evaluated pointwise (never materialised). Works eagerly and
    in-graph (tensor epoch/pos).
    """
    key = tf.stack([tf.constant(order_base, tf.int64), tf.cast(epoch, tf.int64)])
    max_index = tf.constant(self.split_size(split) - 1, tf.int64)
    return tf.random.experimental.index_shuffle(
      tf.cast(pos, tf.int64), seed=key, max_index=max_index
    )

  def records(self, split, index, count, *, epoch, seed, start, stop):
    """Eval only (epoch=None): shard `index` = split indices index, index + count, ..."""
    if epoch is not None:
      raise ValueError("array sources train through order_indices, not records")
    payloads, labels = self._split_tensors(split)
    stop = self.shard_size(split, index, count) if stop is None else stop
    pos = tf.range(start, stop, dtype=tf.int64)
    ds = tf.data.Dataset.from_tensor_slices(pos)
    return ds.map(
      lambda p: (tf.gather(payloads, index + p * count), tf.gather(labels, index + p * count), p)
    )

  def example_name(self, split: str, split_index: int) -> str:
    """The file path (folder) or 'example #i of demo split ...' of a split index."""
    payloads, _ = self._split_arrays(split)
    if payloads.dtype != object:  # not file paths
      return f"example #{split_index} of {self.name} split {split!r}"
    return str(payloads[split_index])

  def describe(self, split, index, count, epoch, pos, seed):
    if epoch is not None:
      raise ValueError("array sources describe training examples with example_name")
    return self.example_name(split, index + pos * count)


class _DemoSource(_ArraySource):
  def __init__(self):
    self.name = "demo"
    self.num_classes = len(demo.CLASSES)

  def _read_split(self, split):
    return demo.arrays(_folder_split(split))

  encoded = False

  def read(self, payload):
    return payload  # already uint8 [64, 64, 3]


class _FolderSource(_ArraySource):
  """folder:DIR, labeled (DIR/train/<class>/...) or not (every image under DIR): data/folders.py."""

  def __init__(self, root: str):
    self.root = root
    self.name = f"folder:{root}"
    self.labeled = folders.is_labeled(root)
    self.classes = tuple(folders.class_dirs(folders.join(root, "train"))) if self.labeled else ()
    self.num_classes = len(self.classes)  # 0: unlabeled

  def _read_split(self, split):
    if self.labeled:
      paths, labels, _ = folders.labeled_split(self.root, _folder_split(split))
    else:  # no split: training and "validation" (the pictures) read the same images
      _folder_split(split)
      paths = [folders.join(self.root, f) for f in folders.image_files(self.root)]
      labels = [0] * len(paths)
    return np.array(paths, dtype=object), np.array(labels, dtype=np.int32)

  def read(self, payload):
    if not storage.is_remote(self.root):
      return tf.io.read_file(payload)
    # gs:// through the storage layer (TensorFlow's own GCS client cannot reach an emulator).
    data = tf.numpy_function(_read_remote, [payload], tf.string, stateful=False)
    return tf.ensure_shape(data, [])


def _read_remote(path) -> bytes:
  """The bytes of the file `path` (bytes, or a 0-d array of them when called eagerly)."""
  return storage.read_bytes(np.asarray(path).item().decode())


class DatasetNotPreparedError(UserError, FileNotFoundError):
  """A TFDS dataset is not prepared in data_dir (this pipeline never downloads)."""


class _TfdsSource(Source):
  """A prepared TFDS dataset with 'image' and 'label' features."""

  def __init__(self, name: str, data_dir: str | None):
    self.name = name
    try:
      self.builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise DatasetError(
        f'unknown dataset {name!r}: not "demo", not "folder:PATH" and not a TFDS dataset ({e})'
      ) from e
    if not self.builder.is_prepared():
      raise DatasetNotPreparedError(_not_prepared_message(name, self.builder))
    self.num_classes = int(self.builder.info.features["label"].num_classes)

  @staticmethod
  def _split(split: str) -> str:
    return _SPLIT_ALIASES.get(split, split)

  def split_size(self, split):
    return int(self.builder.info.splits[self._split(split)].num_examples)

  def _shard(self, split, index, count):
    return tfds.split_for_jax_process(self._split(split), process_index=index, process_count=count)

  def shard_size(self, split, index, count):
    return int(self.builder.info.splits[self._shard(split, index, count)].num_examples)

  def records(self, split, index, count, *, epoch, seed, start, stop):
    """Epoch order: TFDS file shuffle + a shuffle buffer, both seeded by (seed, process, epoch)."""
    shard = self._shard(split, index, count)
    shuffle_seed = None if epoch is None else derived_seed(seed, index, ORDER_TAG, epoch, bits=31)
    read_config = tfds.ReadConfig(
      shuffle_seed=shuffle_seed,
      shuffle_reshuffle_each_iteration=False,
      try_autocache=False,
      options=tf_options(),
    )
    ds = self.builder.as_dataset(
      split=shard,
      shuffle_files=epoch is not None,
      read_config=read_config,
      decoders={"image": tfds.decode.SkipDecoding()},
    )  # still-encoded bytes
    ds = ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))
    if epoch is not None:
      buffer = max(1, min(TFDS_SHUFFLE_BUFFER, self.shard_size(split, index, count)))
      ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    ds = ds.enumerate().map(lambda pos, x: (x[0], x[1], pos))
    if stop is not None:
      ds = ds.take(stop)
    if start:
      ds = ds.skip(start)  # skips encoded records: no decoding, no augmentation
    return ds

  def read(self, payload):
    return payload  # the encoded bytes (tfds.decode.SkipDecoding)


def _not_prepared_message(name: str, builder) -> str:
  root = builder.data_dir_root
  base = name.split(":")[0].split("/")[0]
  msg = (
    f"TFDS dataset {name!r} is not prepared in data_dir {root!r} "
    f"(searched {builder.data_dir!r}). This input pipeline never downloads data. "
  )
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    what = "ImageNet" if base.startswith("imagenet") else f"The {base!r} dataset"
    msg += (
      f"{what} must be downloaded by hand: put the archives (for imagenet2012: "
      f"ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org) into "
      f"{os.path.join(root, 'downloads', 'manual')!r}, then prepare it with "
      f"`tfds build {base} --data_dir {root}`."
    )
  else:
    msg += (
      f"Prepare it first on a machine with network access: `tfds build {base} --data_dir {root}`."
    )
  return msg + " Or point the run at a folder of images: --config.data.name=folder:DIR."


def _folder_split(split: str) -> str:
  """Maps the API's split names to the folder/demo directory names."""
  if split in ("validation", "val", "valid", "eval"):
    return "val"
  if split == "train":
    return "train"
  raise ValueError(f"split must be 'train' or 'validation' for folder/demo sources, got {split!r}")


@functools.lru_cache(maxsize=32)
def get_source(name: str, data_dir: str | None) -> Source:
  if name == "demo":
    return _DemoSource()
  if name.startswith("folder:"):
    return _FolderSource(folders.root_of(name))
  return _TfdsSource(name, data_dir)


# --------------------------------------------------------------------------
# Public API: info
# --------------------------------------------------------------------------


def dataset_info(
  name: str, data_dir: str | None = None, train_split: str = "train", eval_split: str = "validation"
) -> DatasetInfo:
  """Number of classes and global split sizes (folder: counts files, corrupt ones included)."""
  source = get_source(name, data_dir)
  return DatasetInfo(
    num_classes=source.num_classes,
    num_train_examples=source.split_size(train_split),
    num_eval_examples=source.split_size(eval_split),
  )
