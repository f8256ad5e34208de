"""Input pipeline: deterministic, resumable, multi-process tf.data iterators.

Sources, selected by ``name``:

* a TFDS name (default ``'imagenet2012'``), read from an already prepared
  ``data_dir`` (never downloaded here);
* ``'folder:PATH'``: ``PATH/train/<class>/<image>`` and ``PATH/val/<class>/<image>``;
* ``'demo'``: 12 classes of synthetic 64x64 shapes/textures generated with
  numpy (no files, no network) for smoke tests and tiny experiments.

Determinism, resumption and multiple processes
    Folder/demo sources (the whole split is an in-memory array of images or
    file names): the training stream is the same whatever the number of
    processes. Epoch ``e`` visits the whole split in ONE global order,
    ``tf.random.experimental.index_shuffle`` keyed by (seed, e) only, which
    gives the split index at any position without materialising the
    permutation. With ``b = local_batch_size`` and ``G = b * process_count``,
    global batch ``k`` of an epoch is positions [k*G, (k+1)*G) of that order
    and process ``i`` reads [k*G + i*b, k*G + (i+1)*b); ``steps_per_epoch = N
    // G`` (the epoch's remainder is dropped globally). The example at
    position ``p`` is augmented with the stateless seed (f(seed), e * 2**32 +
    p), with no process index, so the concatenation over processes of their
    step-``k`` batches is bit-identical to the step-``k`` batch of one process
    with ``local_batch_size = G``. Global step ``s`` reads (epoch, step in
    epoch) = divmod(s, steps_per_epoch) and builds its own small tf.data
    pipeline (``Dataset.range(start_step, inf).interleave(step)``, a few steps
    in flight), so ``train_iterator(start_step=k)`` starts there in O(1)
    without touching anything before it, and there is no stall between
    epochs. Like every stream here, it does not depend on the tf.data
    parallelism or prefetch either.

    TFDS sources keep per-process shards: each process reads its
    ``tfds.split_for_jax_process`` shard in an order (TFDS file shuffle +
    shuffle buffer) that is a function of (seed, process, e), augments the
    example at position ``p`` of it with the seed (f(seed, process), e * 2**32
    + p), and ``steps_per_epoch`` = smallest shard // local_batch_size. Its
    stream is deterministic but DEPENDS on process_count. Resuming skips the
    still-encoded records before anything is decoded or augmented. TFDS
    epochs are separate ``builder.as_dataset`` pipelines (the file-shuffle
    seed of ``as_dataset`` is a Python int), chained in Python; the next one
    is opened in a background thread shortly before the current one ends.

Corrupt images
    Decoding (``tf.io.decode_image``, which sniffs JPEG/PNG/GIF/BMP/WebP from
    the bytes) runs in its own ``map`` followed by ``Dataset.ignore_errors()``,
    so a record that cannot be read or decoded (garbage bytes, truncated
    JPEG/PNG, unknown format, missing file) is dropped in C++ instead of
    killing the iterator, at full C++ decoding speed. Augmentation runs in a
    *separate* map after that, so bugs in augmentation still raise. Every
    example carries its position; a missing position is exactly a skipped
    image. Skips are counted per iterator (``.num_skipped``) and per process
    (``skipped_images()``) and logged with ``logging.warning`` (with the file
    path for folder sources, the record position for TFDS); each process
    counts the corrupt images at the positions it owns.

    Folder/demo: the batch size never changes. A slot (epoch e, position p)
    whose image is corrupt is filled with the first decodable image at
    positions p+1, p+2, ... of the same epoch's global order (wrapping around;
    decoded in Python, eagerly, off the fast path) and augmented with the
    seed of slot p. The filler is a function of the global order only, so
    the stream stays invariant to the process count and resuming anywhere
    stays exact; the cost is that the filler image appears twice (more after
    a run of corrupt images) in that epoch, differently augmented. A lookahead of
    ``_MAX_FILL_TRIES`` consecutive undecodable images raises RuntimeError.

    TFDS: a skip shifts this process's batch composition for the rest of the
    epoch (the epoch's last, now partial, batch is dropped and the stream
    goes on with the next epoch, so every process still yields a full batch
    at every step): the stream stays deterministic, but ``start_step``
    resumes at the nominal (epoch, offset), so resuming after a corrupt image
    was passed is off by the skipped examples (exact when none was).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import threading
from concurrent import futures
from typing import Any, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from fcmae import augment as aug
from fcmae.augment import IMAGENET_MEAN, IMAGENET_STD  # re-exported

__all__ = [
    'IMAGENET_MEAN', 'IMAGENET_STD', 'DatasetInfo', 'DatasetNotPreparedError', 'DEMO_CLASSES',
    'dataset_info', 'train_iterator', 'eval_iterator', 'make_global_batch', 'skipped_images',
    'demo_arrays', 'TrainIterator', 'EvalIterator',
]

logger = logging.getLogger(__name__)

# TF must never grab an accelerator: JAX owns it.
try:
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):  # TF runtime already initialised; nothing we can do then.
  pass

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')
# Records held in the shuffle buffer after TFDS's file-level shuffle (encoded
# images, ~110 KB each for ImageNet -> ~1.1 GB).
TFDS_SHUFFLE_BUFFER = 10_000
_SPLIT_ALIASES = {'val': 'validation', 'valid': 'validation', 'eval': 'validation'}


def _num_threads() -> int:
  """Threads for each tf.data pipeline (env FCMAE_DATA_THREADS overrides)."""
  env = os.environ.get('FCMAE_DATA_THREADS')
  if env:
    return max(1, int(env))
  return max(1, min(os.cpu_count() or 1, 16))


def _tf_options() -> tf.data.Options:
  """Deterministic order, a private bounded threadpool, single-threaded ops."""
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = _num_threads()
  options.threading.max_intra_op_parallelism = 1
  return options


_IMAGE_SPEC = tf.TensorSpec([None, None, 3], tf.uint8)
_SEED_SPEC = tf.TensorSpec([2], tf.int64)


def _freeze(value: Any) -> Any:
  """Hashable version of an augment_options value (lists -> tuples)."""
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


@functools.lru_cache(maxsize=64)
def _compiled_train_transform(augment: str, image_size: int, options_key: tuple) -> Any:
  """tf.function(uint8 [H, W, 3], seed [2]) -> float32 [S, S, 3], traced once per process.

  Tracing RandAugment's 2 x 15 branches takes seconds; caching the traced
  function keeps iterator construction cheap.
  """
  fn = aug.build_train_transform(augment, image_size, dict(options_key))
  return tf.function(fn, input_signature=[_IMAGE_SPEC, _SEED_SPEC], autograph=False)


@functools.lru_cache(maxsize=64)
def _compiled_eval_transform(image_size: int, crop_pct: float) -> Any:
  """tf.function(uint8 [H, W, 3]) -> float32 [S, S, 3] normalized eval crop."""
  fn = lambda image: aug.normalize(aug.eval_resize_crop(image, image_size, crop_pct))
  return tf.function(fn, input_signature=[_IMAGE_SPEC], autograph=False)


def _in_background(fn, *args) -> futures.Future:
  """Runs fn(*args) in a short-lived worker thread; returns its future."""
  executor = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix='fcmae-data')
  try:
    return executor.submit(fn, *args)
  finally:
    executor.shutdown(wait=False)


# --------------------------------------------------------------------------
# Skip accounting
# --------------------------------------------------------------------------

_skipped_lock = threading.Lock()
_skipped_total = 0


def skipped_images() -> int:
  """Total corrupt/unreadable images skipped by all iterators of this process."""
  return _skipped_total


def _add_skipped(n: int) -> None:
  global _skipped_total
  with _skipped_lock:
    _skipped_total += n


# --------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------

_ORDER_TAG, _AUG_TAG = 0x0D3E, 0xA06


def _derived_seed(seed: int, *tags: int, bits: int = 63) -> int:
  """A well-mixed non-negative int of `bits` bits from (seed, *tags).

  Per-process TFDS seeds pass the process index as the first tag; the global
  folder/demo seeds pass none.
  """
  seed = int(seed) % (1 << 64)  # SeedSequence wants non-negative entropy
  ss = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, *tags])
  return int(ss.generate_state(1, np.uint64)[0] >> (64 - bits))


def _example_seed(base: int, epoch, pos) -> tf.Tensor:
  """Stateless seed [2] int64 of the example at position `pos` of `epoch`."""
  epoch = tf.cast(epoch, tf.int64)
  return tf.stack([tf.constant(base, tf.int64), epoch * (1 << 32) + tf.cast(pos, tf.int64)])


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------

def _check_process(process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'bad process_index/process_count: {process_index}/{process_count}')


class _Source:
  """A split-able collection of (payload, label) with a payload decoder.

  ``records`` returns a dataset of (payload, label int32, pos int64) with the
  positions [start, stop) of this process's shard in an epoch's visiting
  order (natural order for eval, epoch=None); ``decode`` turns a payload into
  a uint8 [H, W, 3] image and may fail, which counts as a corrupt image.
  """
  name: str
  num_classes: int
  # True: the training stream reads one global order of the whole split
  # (_GlobalTrainPipeline); False: per-process shards (_ShardedTrainPipeline).
  global_order = False

  def split_size(self, split: str) -> int:
    raise NotImplementedError

  def shard_size(self, split: str, index: int, count: int) -> int:
    raise NotImplementedError

  def records(self, split: str, index: int, count: int, *, epoch, seed: int, start,
              stop: int | None) -> tf.data.Dataset:
    raise NotImplementedError

  def decode(self, payload: tf.Tensor) -> tf.Tensor:
    raise NotImplementedError

  def describe(self, split: str, index: int, count: int, epoch: int | None, pos: int,
               seed: int) -> str:
    """Human-readable name of the example at `pos` of `epoch` (for skip warnings)."""
    where = '' if epoch is None else f' of epoch {epoch}'
    return f'record #{pos}{where} of {self.name} split {split!r} (process shard {index}/{count})'


class _ArraySource(_Source):
  """folder/demo: payloads in memory; random access by split index.

  Training reads one global order per epoch (``order_indices``); eval reads
  per-process shards by striding (``records`` with epoch=None).
  """

  global_order = True

  def _split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(payloads [N, ...], labels int32 [N]) in canonical order (numpy)."""
    raise NotImplementedError

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
    return tf.random.experimental.index_shuffle(tf.cast(pos, tf.int64), seed=key,
                                                max_index=max_index)

  def records(self, split, index, count, *, epoch, seed, start, stop):
    """Eval only (epoch=None): shard `index` = split indices index, index + count, ..."""
    if epoch is not None:
      raise ValueError('array sources train through order_indices, not records')
    payloads, labels = self._split_tensors(split)
    stop = self.shard_size(split, index, count) if stop is None else stop
    pos = tf.range(start, stop, dtype=tf.int64)
    ds = tf.data.Dataset.from_tensor_slices(pos)
    return ds.map(lambda p: (tf.gather(payloads, index + p * count),
                             tf.gather(labels, index + p * count), p))

  def example_name(self, split: str, split_index: int) -> str:
    """The file path (folder) or 'example #i of demo split ...' of a split index."""
    payloads, _ = self._split_arrays(split)
    if payloads.dtype != object:  # not file paths
      return f'example #{split_index} of {self.name} split {split!r}'
    return str(payloads[split_index])

  def describe(self, split, index, count, epoch, pos, seed):
    if epoch is not None:
      raise ValueError('array sources describe training examples with example_name')
    return self.example_name(split, index + pos * count)


class _DemoSource(_ArraySource):

  def __init__(self):
    self.name = 'demo'
    self.num_classes = len(DEMO_CLASSES)

  def _split_arrays(self, split):
    return demo_arrays(_folder_split(split))

  def decode(self, payload):
    return payload  # already uint8 [64, 64, 3]


class _FolderSource(_ArraySource):

  def __init__(self, root: str):
    self.root = os.path.abspath(os.path.expanduser(root))
    self.name = f'folder:{self.root}'
    self.classes = _folder_classes(self.root)
    self.num_classes = len(self.classes)

  def _split_arrays(self, split):
    return _scan_folder_split(self.root, _folder_split(split))

  def decode(self, payload):
    data = tf.io.read_file(payload)
    image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    return tf.ensure_shape(image, [None, None, 3])


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS dataset is not prepared in data_dir (this pipeline never downloads)."""


class _TfdsSource(_Source):
  """A prepared TFDS dataset with 'image' and 'label' features."""

  def __init__(self, name: str, data_dir: str | None):
    self.name = name
    try:
      self.builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise ValueError(f'unknown dataset {name!r}: not "demo", not "folder:PATH" and not a TFDS '
                       f'dataset ({e})') from e
    if not self.builder.is_prepared():
      raise DatasetNotPreparedError(_not_prepared_message(name, self.builder))
    self.num_classes = int(self.builder.info.features['label'].num_classes)

  @staticmethod
  def _split(split: str) -> str:
    return _SPLIT_ALIASES.get(split, split)

  def split_size(self, split):
    return int(self.builder.info.splits[self._split(split)].num_examples)

  def _shard(self, split, index, count):
    return tfds.split_for_jax_process(self._split(split), process_index=index,
                                      process_count=count)

  def shard_size(self, split, index, count):
    return int(self.builder.info.splits[self._shard(split, index, count)].num_examples)

  def records(self, split, index, count, *, epoch, seed, start, stop):
    """Epoch order: TFDS file shuffle + a shuffle buffer, both seeded by (seed, process, epoch)."""
    shard = self._shard(split, index, count)
    shuffle_seed = None if epoch is None else _derived_seed(seed, index, _ORDER_TAG, epoch,
                                                            bits=31)
    read_config = tfds.ReadConfig(
        shuffle_seed=shuffle_seed, shuffle_reshuffle_each_iteration=False,
        try_autocache=False, options=_tf_options())
    ds = self.builder.as_dataset(
        split=shard, shuffle_files=epoch is not None, read_config=read_config,
        decoders={'image': tfds.decode.SkipDecoding()})  # still-encoded bytes
    ds = ds.map(lambda ex: (ex['image'], tf.cast(ex['label'], tf.int32)))
    if epoch is not None:
      buffer = max(1, min(TFDS_SHUFFLE_BUFFER, self.shard_size(split, index, count)))
      ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    ds = ds.enumerate().map(lambda pos, x: (x[0], x[1], pos))
    if stop is not None:
      ds = ds.take(stop)
    if start:
      ds = ds.skip(start)  # skips encoded records: no decoding, no augmentation
    return ds

  def decode(self, payload):
    image = tf.io.decode_image(payload, channels=3, expand_animations=False, dtype=tf.uint8)
    return tf.ensure_shape(image, [None, None, 3])


def _not_prepared_message(name: str, builder) -> str:
  root = builder.data_dir_root
  base = name.split(':')[0].split('/')[0]
  msg = (f'TFDS dataset {name!r} is not prepared in data_dir {root!r} '
         f'(searched {builder.data_dir!r}). This input pipeline never downloads data. ')
  if getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
    what = 'ImageNet' if base.startswith('imagenet') else f'The {base!r} dataset'
    msg += (f'{what} must be downloaded by hand: put the archives (for imagenet2012: '
            f'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org) into '
            f'{os.path.join(root, "downloads", "manual")!r}, then prepare it with '
            f'`tfds build {base} --data_dir {root}`.')
  else:
    msg += (f'Prepare it first on a machine with network access: '
            f'`tfds build {base} --data_dir {root}`.')
  return msg


def _folder_split(split: str) -> str:
  """Maps the API's split names to the folder/demo directory names."""
  if split in ('validation', 'val', 'valid', 'eval'):
    return 'val'
  if split == 'train':
    return 'train'
  raise ValueError(f"split must be 'train' or 'validation' for folder/demo sources, got {split!r}")


@functools.lru_cache(maxsize=32)
def _get_source(name: str, data_dir: str | None) -> _Source:
  if name == 'demo':
    return _DemoSource()
  if name.startswith('folder:'):
    return _FolderSource(name[len('folder:'):])
  return _TfdsSource(name, data_dir)


# --------------------------------------------------------------------------
# Folder scanning
# --------------------------------------------------------------------------

def _class_dirs(split_dir: str) -> list[str]:
  return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith('.'))


@functools.lru_cache(maxsize=32)
def _folder_classes(root: str) -> tuple[str, ...]:
  """Sorted class names = subdirectories of ROOT/train."""
  train_dir = os.path.join(root, 'train')
  if not os.path.isdir(root):
    raise FileNotFoundError(f'dataset folder {root!r} does not exist')
  if not os.path.isdir(train_dir):
    raise FileNotFoundError(f'dataset folder {root!r} has no train/ directory ({train_dir!r}); '
                            f'expected ROOT/train/<class>/<images>')
  classes = _class_dirs(train_dir)
  if not classes:
    raise ValueError(f'{train_dir!r} has no class subdirectories')
  return tuple(classes)


@functools.lru_cache(maxsize=64)
def _scan_folder_split(root: str, split_dir_name: str) -> tuple[np.ndarray, np.ndarray]:
  """(paths object [N], labels int32 [N]) of ROOT/<split>/<class>/**, sorted."""
  classes = _folder_classes(root)
  index = {c: i for i, c in enumerate(classes)}
  split_dir = os.path.join(root, split_dir_name)
  if not os.path.isdir(split_dir):
    raise FileNotFoundError(f'split directory {split_dir!r} does not exist')
  paths, labels = [], []
  for cls in _class_dirs(split_dir):
    if cls not in index:
      raise ValueError(f'class {cls!r} in {split_dir!r} is not a class of '
                       f'{os.path.join(root, "train")!r}')
    files = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(split_dir, cls), followlinks=True):
      dirnames.sort()
      files.extend(os.path.join(dirpath, f) for f in filenames
                   if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.'))
    files.sort()
    paths.extend(files)
    labels.extend([index[cls]] * len(files))
  if not paths:
    raise ValueError(f'split directory {split_dir!r} contains no images '
                     f'(extensions {", ".join(IMAGE_EXTENSIONS)})')
  return np.array(paths, dtype=object), np.array(labels, dtype=np.int32)


# --------------------------------------------------------------------------
# Demo data
# --------------------------------------------------------------------------

DEMO_CLASSES = ('circle', 'square', 'triangle', 'horizontal_stripes', 'vertical_stripes',
                'diagonal_stripes', 'checkerboard', 'concentric_rings', 'plus', 'blob', 'annulus',
                'x_cross')
DEMO_IMAGE_SIZE = 64
DEMO_PER_CLASS = {'train': 100, 'val': 20}
_DEMO_SEED = 20240601


def _demo_masks(cls: int, n: int, rng: np.random.Generator) -> np.ndarray:
  """Foreground coverage in [0, 1], float32 [n, 64, 64], for `n` images of class `cls`."""
  size = DEMO_IMAGE_SIZE
  grid = np.arange(size, dtype=np.float32) + 0.5
  yy, xx = grid[None, :, None], grid[None, None, :]  # [1, 64, 1], [1, 1, 64]

  def u(lo, hi):  # one value per image, broadcastable to [n, 64, 64]
    return rng.uniform(lo, hi, size=(n, 1, 1)).astype(np.float32)

  def rotated(cx, cy, theta):
    dx, dy = xx - cx, yy - cy
    return np.cos(theta) * dx + np.sin(theta) * dy, -np.sin(theta) * dx + np.cos(theta) * dy

  def solid(sdf):  # signed distance (pixels, <0 inside) -> antialiased coverage
    return np.clip(0.5 - sdf, 0.0, 1.0)

  def wave(t, period, phase):  # soft stripes along coordinate t
    return np.clip(3.0 * np.sin(2 * np.pi * t / period + phase) + 0.5, 0.0, 1.0)

  deg = np.pi / 180
  name = DEMO_CLASSES[cls]
  cx, cy = u(22, 42), u(22, 42)
  if name == 'circle':
    return solid(np.hypot(xx - cx, yy - cy) - u(9, 20))
  if name == 'square':
    a, b = rotated(cx, cy, u(-15, 15) * deg)
    return solid(np.maximum(np.abs(a), np.abs(b)) - u(8, 17))
  if name == 'triangle':  # equilateral, pointing up (+-15 deg)
    radius, theta = u(12, 24), u(-15, 15) * deg
    sdf = np.full((n, size, size), -np.inf, np.float32)
    for k in range(3):  # outward edge normals at 90, 210, 330 degrees (+theta), y down
      phi = theta + (90 + 120 * k) * deg
      sdf = np.maximum(sdf, np.cos(phi) * (xx - cx) + np.sin(phi) * (yy - cy))
    return solid(sdf - radius / 2)
  if name in ('horizontal_stripes', 'vertical_stripes', 'diagonal_stripes'):
    base = {'horizontal_stripes': 90.0, 'vertical_stripes': 0.0}.get(name)
    if base is None:
      base = np.where(rng.random((n, 1, 1)) < 0.5, 45.0, 135.0)
    theta = (base + u(-10, 10)) * deg
    return wave(np.cos(theta) * xx + np.sin(theta) * yy, u(6, 14), u(0, 2 * np.pi))
  if name == 'checkerboard':
    a, b = rotated(cx, cy, u(-10, 10) * deg)
    cell = u(5, 11)
    s = np.sin(np.pi * a / cell + u(0, np.pi)) * np.sin(np.pi * b / cell + u(0, np.pi))
    return np.clip(4.0 * s + 0.5, 0.0, 1.0)
  if name == 'concentric_rings':
    return wave(np.hypot(xx - cx, yy - cy), u(6, 11), u(0, 2 * np.pi))
  if name in ('plus', 'x_cross'):
    theta = (u(-10, 10) + (45.0 if name == 'x_cross' else 0.0)) * deg
    a, b = rotated(cx, cy, theta)
    arm, half = u(13, 22), u(2.5, 5.0)
    bar1 = np.maximum(np.abs(a) - arm, np.abs(b) - half)
    bar2 = np.maximum(np.abs(a) - half, np.abs(b) - arm)
    return solid(np.minimum(bar1, bar2))
  if name == 'blob':  # soft radial gradient, no edges
    sigma = u(6, 14)
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))
  if name == 'annulus':
    outer, width = u(13, 22), u(3, 6)
    return solid(np.abs(np.hypot(xx - cx, yy - cy) - (outer - width / 2)) - width / 2)
  raise AssertionError(name)


@functools.lru_cache(maxsize=None)
def demo_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
  """The built-in demo split: (images uint8 [N, 64, 64, 3], labels int32 [N]).

  Classes are interleaved (label of example i is i % num_classes). Each image
  draws position/size/angle/period, a dark and a light colour (randomly
  assigned to foreground/background) and pixel noise from an RNG seeded by
  (split, class), so the arrays are identical on every call and machine.
  The returned arrays are read-only (cached).
  """
  split = _folder_split(split)
  per_class = DEMO_PER_CLASS[split]
  num_classes = len(DEMO_CLASSES)
  images = np.empty((per_class * num_classes, DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE, 3), np.uint8)
  for cls in range(num_classes):
    rng = np.random.default_rng([_DEMO_SEED, 0 if split == 'train' else 1, cls])
    mask = _demo_masks(cls, per_class, rng)[..., None]  # [n, 64, 64, 1]
    dark = rng.uniform(0, 100, (per_class, 1, 1, 3))
    light = rng.uniform(155, 255, (per_class, 1, 1, 3))
    swap = rng.random((per_class, 1, 1, 1)) < 0.5
    fg, bg = np.where(swap, dark, light), np.where(swap, light, dark)
    img = bg + (fg - bg) * mask + rng.normal(0.0, 6.0, mask.shape[:3] + (3,))
    images[cls::num_classes] = np.clip(np.round(img), 0, 255).astype(np.uint8)
  labels = np.tile(np.arange(num_classes, dtype=np.int32), per_class)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


# --------------------------------------------------------------------------
# Public API: info
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train_examples: int  # global (all processes)
  num_eval_examples: int  # global


def dataset_info(name: str, data_dir: str | None = None, train_split: str = 'train',
                 eval_split: str = 'validation') -> DatasetInfo:
  """Number of classes and global split sizes (folder: counts files, corrupt ones included)."""
  source = _get_source(name, data_dir)
  return DatasetInfo(num_classes=source.num_classes,
                     num_train_examples=source.split_size(train_split),
                     num_eval_examples=source.split_size(eval_split))


# --------------------------------------------------------------------------
# Iterators
# --------------------------------------------------------------------------

class _SkipTracker:
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
    _add_skipped(hi - lo)
    for p in range(lo, hi):
      logger.warning('Skipped corrupt or unreadable image: %s', self.describe(self.epoch, p))

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


def _decoded(source: _Source, ds: tf.data.Dataset) -> tf.data.Dataset:
  """(payload, label, pos) -> (uint8 image [H, W, 3], label, pos); undecodable ones dropped."""
  ds = ds.map(lambda payload, label, pos: (source.decode(payload), label, pos),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.ignore_errors()


@dataclasses.dataclass
class _TrainPipeline:
  """Everything a training batch generator needs (and no reference back to
  the TrainIterator, so dropping the iterator frees its tf.data pipeline)."""
  source: _Source
  split: str
  image_size: int
  batch_size: int  # local
  steps_per_epoch: int
  seed: int
  process_index: int
  process_count: int
  prefetch: int
  transform: Any  # compiled (uint8 image, seed [2]) -> float32 [S, S, 3]
  aug_base: int  # first word of every per-example stateless seed

  @property
  def num_skipped(self) -> int:
    raise NotImplementedError

  def batches(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """Full batches (image [B, S, S, 3], label [B]) from step `start_step` on."""
    raise NotImplementedError

  def numpy_iterator(self, ds: tf.data.Dataset):
    if self.prefetch:
      ds = ds.prefetch(self.prefetch)
    return ds.with_options(_tf_options()).as_numpy_iterator()


# Folder/demo: how many positions past a corrupt one are tried to fill its slot.
_MAX_FILL_TRIES = 100
_MAX_STEPS = 1 << 62  # "infinite" (Dataset.range of global steps)


@dataclasses.dataclass
class _GlobalTrainPipeline(_TrainPipeline):
  """Folder/demo: one global order per epoch, process i reads its slice of each global batch."""
  order_base: int  # first word of every epoch's order key
  skipped: int = 0

  @property
  def num_skipped(self) -> int:
    return self.skipped

  def _first_position(self, step_in_epoch):
    """Position (in the epoch's global order) of this process's first example of a step."""
    return (step_in_epoch * self.batch_size * self.process_count
            + self.process_index * self.batch_size)

  def step_batches(self, start_step: int) -> tf.data.Dataset:
    """One element per global step >= start_step: this process's decodable examples of it.

    Elements: image float32 [<=B, S, S, 3], label int32 [<=B], pos int64 [<=B]
    (positions in the epoch's order) and step int64 []; a step whose images
    are all corrupt yields an empty batch (never nothing: an all-corrupt
    split would otherwise spin forever inside tf.data).
    """
    source, split, b, spe = self.source, self.split, self.batch_size, self.steps_per_epoch
    payloads, labels = source._split_tensors(split)
    transform, aug_base, order_base = self.transform, self.aug_base, self.order_base
    size = self.image_size

    def step_batch(step):
      epoch, k = step // spe, step % spe
      pos = self._first_position(k) + tf.range(b, dtype=tf.int64)
      index = source.order_indices(split, order_base, epoch, pos)
      ds = tf.data.Dataset.from_tensor_slices((index, pos))
      ds = ds.map(lambda i, p: (source.decode(tf.gather(payloads, i)), tf.gather(labels, i), p),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      ds = ds.ignore_errors()  # corrupt images: their slots are filled in Python (_complete)
      ds = ds.map(lambda image, label, p: {
          'image': transform(image, _example_seed(aug_base, epoch, p)), 'label': label,
          'pos': p}, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      empty = tf.data.Dataset.from_tensors(
          {'image': tf.zeros([0, size, size, 3]), 'label': tf.zeros([0], tf.int32),
           'pos': tf.zeros([0], tf.int64)})
      ds = ds.batch(b).concatenate(empty).take(1)
      return ds.map(lambda batch: {**batch, 'step': step})

    # A few steps in flight so the threads stay busy across step boundaries;
    # deterministic interleave of one-element datasets keeps the step order.
    cycle = max(2, min(16, -(-2 * _num_threads() // b)))
    return tf.data.Dataset.range(start_step, _MAX_STEPS).interleave(
        step_batch, cycle_length=cycle, block_length=1, num_parallel_calls=cycle,
        deterministic=True)

  def batches(self, start_step):
    for step, batch in enumerate(self.numpy_iterator(self.step_batches(start_step)),
                                 start_step):
      assert int(batch['step']) == step, (int(batch['step']), step)
      yield self._complete(step, batch)

  def _complete(self, step: int, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The full batch of `step`: fills the slots of corrupt images (see _fill)."""
    b = self.batch_size
    if len(batch['label']) == b:
      return {'image': batch['image'], 'label': batch['label']}  # the fast path
    epoch, k = divmod(step, self.steps_per_epoch)
    first = self._first_position(k)
    s = self.image_size
    image = np.empty((b, s, s, 3), np.float32)  # [B, S, S, 3]
    label = np.empty((b,), np.int32)  # [B]
    present = np.zeros((b,), bool)
    slots = batch['pos'] - first
    image[slots], label[slots], present[slots] = batch['image'], batch['label'], True
    for j in np.flatnonzero(~present):
      image[j], label[j] = self._fill(epoch, first + int(j))
    return {'image': image, 'label': label}

  def _fill(self, epoch: int, pos: int) -> tuple[np.ndarray, int]:
    """Counts the corrupt image at (epoch, pos) and returns its slot's replacement.

    The replacement is the first decodable image at positions pos+1, pos+2,
    ... of the epoch's global order (wrapping around), augmented with the
    seed of slot `pos`: a function of (seed, epoch, pos) only, whichever
    process owns the slot. Runs eagerly; corrupt images are rare.
    """
    source, split = self.source, self.split
    n = source.split_size(split)
    payloads, labels = source._split_tensors(split)
    own = int(source.order_indices(split, self.order_base, epoch, pos))
    self.skipped += 1
    _add_skipped(1)
    for q in range(pos + 1, pos + 1 + min(n - 1, _MAX_FILL_TRIES)):
      index = int(source.order_indices(split, self.order_base, epoch, q % n))
      try:
        image = source.decode(tf.gather(payloads, index))
      except tf.errors.OpError:
        continue
      logger.warning('Skipped corrupt or unreadable image: %s (epoch %d, position %d); its slot '
                     'is filled with the next decodable image of the epoch order, %s',
                     source.example_name(split, own), epoch, pos,
                     source.example_name(split, index))
      out = self.transform(image, _example_seed(self.aug_base, epoch, pos))
      return out.numpy(), int(labels[index])
    raise RuntimeError(
        f'Skipped corrupt or unreadable image {source.example_name(split, own)} (epoch {epoch}, '
        f'position {pos}) and none of the next {min(n - 1, _MAX_FILL_TRIES)} images of the '
        f'epoch order of {source.name} split {split!r} could be decoded either: is the data '
        f'readable?')


@dataclasses.dataclass
class _ShardedTrainPipeline(_TrainPipeline):
  """TFDS: each process reads its own shard (its stream depends on process_count)."""
  tracker: _SkipTracker

  @property
  def num_skipped(self) -> int:
    return self.tracker.count

  def epoch_batches(self, epoch: int, start: int) -> tf.data.Dataset:
    """Batches of epoch `epoch` from position `start` of this process's shard.

    Elements: image float32 [<=B, S, S, 3], label int32 [<=B], pos int64 [<=B],
    epoch int64 [<=B]; only the epoch's last batch can be short (after skips).
    """
    stop = self.steps_per_epoch * self.batch_size  # the epoch's remainder is dropped
    ds = self.source.records(self.split, self.process_index, self.process_count, epoch=epoch,
                             seed=self.seed, start=start, stop=stop)
    base, transform = self.aug_base, self.transform
    epoch = tf.cast(epoch, tf.int64)

    def augment_fn(image, label, pos):
      return {'image': transform(image, _example_seed(base, epoch, pos)), 'label': label,
              'pos': pos, 'epoch': epoch}

    ds = _decoded(self.source, ds)
    ds = ds.map(augment_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(self.batch_size)

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
        if upcoming is None and remaining <= _TFDS_PREBUILD_AHEAD:
          upcoming = _in_background(open_epoch, epoch + 1, 0)
        yield batch
      epoch, remaining = epoch + 1, self.steps_per_epoch

  def batches(self, start_step):
    epoch, offset = divmod(start_step, self.steps_per_epoch)
    stop = self.steps_per_epoch * self.batch_size
    tracker = self.tracker
    tracker.start(epoch, offset * self.batch_size)
    for batch in self.stream(epoch, offset * self.batch_size):
      batch_epoch = int(batch.pop('epoch')[0])
      while batch_epoch > tracker.epoch:  # entered a new epoch: close the old one
        tracker.finish(stop)
        tracker.start(tracker.epoch + 1, 0)
      tracker.see(batch.pop('pos'))
      if len(batch['label']) == self.batch_size:
        yield batch  # image float32 [B, S, S, 3], label int32 [B]


# Open the next TFDS epoch in the background when this many batches are left
# (not earlier: an opened TFDS pipeline also fills its shuffle buffer).
_TFDS_PREBUILD_AHEAD = 256


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

  def __init__(self, source: _Source, *, split: str, image_size: int, local_batch_size: int,
               seed: int, start_step: int, process_index: int, process_count: int,
               augment: str, augment_options: dict | None, prefetch: int):
    _check_process(process_index, process_count)
    if local_batch_size < 1 or start_step < 0:
      raise ValueError(f'bad local_batch_size={local_batch_size} / start_step={start_step}')
    aug.resolve_options(augment, augment_options)  # validate here, not in a tf.data thread
    options_key = tuple(sorted((k, _freeze(v)) for k, v in (augment_options or {}).items()))
    common = dict(source=source, split=split, image_size=image_size,
                  batch_size=local_batch_size, seed=seed, process_index=process_index,
                  process_count=process_count, prefetch=prefetch,
                  transform=_compiled_train_transform(augment, image_size, options_key))
    if source.global_order:
      size = source.split_size(split)
      self.steps_per_epoch = size // (local_batch_size * process_count)
      if self.steps_per_epoch == 0:
        raise ValueError(f'{source.name} split {split!r} has {size} examples, fewer than one '
                         f'global batch (local_batch_size={local_batch_size} x {process_count} '
                         f'processes)')
      self._pipeline: _TrainPipeline = _GlobalTrainPipeline(
          **common, steps_per_epoch=self.steps_per_epoch,
          aug_base=_derived_seed(seed, _AUG_TAG), order_base=_derived_seed(seed, _ORDER_TAG))
    else:
      min_shard = min(source.shard_size(split, i, process_count) for i in range(process_count))
      self.steps_per_epoch = min_shard // local_batch_size
      if self.steps_per_epoch == 0:
        raise ValueError(f'{source.name} split {split!r}: the smallest per-process shard has '
                         f'{min_shard} examples, fewer than local_batch_size={local_batch_size}')
      self._pipeline = _ShardedTrainPipeline(
          **common, steps_per_epoch=self.steps_per_epoch,
          aug_base=_derived_seed(seed, process_index, _AUG_TAG),
          tracker=_SkipTracker(lambda epoch, pos: source.describe(
              split, process_index, process_count, epoch, pos, seed)))
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

  def __iter__(self) -> 'TrainIterator':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._batches)
    self.step += 1
    return batch

  def close(self) -> None:
    """Stops the pipeline now (also happens when the iterator is garbage collected)."""
    self._batches.close()


def train_iterator(name: str = 'imagenet2012', *, data_dir: str | None = None, image_size: int,
                   local_batch_size: int, seed: int, start_step: int = 0,
                   process_index: int = 0, process_count: int = 1, augment: str = 'pretrain',
                   augment_options: dict | None = None, split: str = 'train',
                   prefetch: int = 2) -> TrainIterator:
  """Infinite, deterministic, resumable iterator of this process's training batches.

  Yields dicts of numpy arrays: ``image`` float32 [local_batch_size,
  image_size, image_size, 3] (ImageNet-normalized) and ``label`` int32
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
  (RandomResizedCrop(0.08-1) + flip + RandAugment + RandomErasing; configure
  with augment_options={'randaugment': 'rand-m9-mstd0.5-inc1' or '',
  'reprob': 0.25}) or 'none' (eval-style resize + center crop).
  The returned iterator also exposes ``num_skipped``, ``steps_per_epoch``,
  ``step`` and ``epoch``.
  """
  return TrainIterator(_get_source(name, data_dir), split=split, image_size=image_size,
                       local_batch_size=local_batch_size, seed=seed, start_step=start_step,
                       process_index=process_index, process_count=process_count,
                       augment=augment, augment_options=augment_options, prefetch=prefetch)


class EvalIterator:
  """One exact pass over an eval split; see ``eval_iterator``.

  ``len(it)`` is the number of batches, identical on every process.
  ``num_skipped`` counts corrupt images (their slots become padding).
  """

  def __init__(self, source: _Source, *, split: str, image_size: int, local_batch_size: int,
               process_index: int, process_count: int, crop_pct: float, prefetch: int = 2):
    _check_process(process_index, process_count)
    if local_batch_size < 1:
      raise ValueError(f'bad local_batch_size={local_batch_size}')
    if not 0.0 < crop_pct <= 1.0:
      raise ValueError(f'crop_pct must be in (0, 1], got {crop_pct}')
    self.source, self.split, self.batch_size = source, split, local_batch_size
    self.process_index, self.process_count = process_index, process_count
    self.image_size, self.crop_pct, self.prefetch = image_size, crop_pct, prefetch
    shard_sizes = [source.shard_size(split, i, process_count) for i in range(process_count)]
    self.shard_size = shard_sizes[process_index]
    self.num_batches = -(-max(shard_sizes) // local_batch_size)  # ceil
    self._tracker = _SkipTracker(lambda epoch, pos: source.describe(
        split, process_index, process_count, None, pos, 0))
    self._batches = self._generate()

  @property
  def num_skipped(self) -> int:
    return self._tracker.count

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> 'EvalIterator':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._batches)

  def _generate(self) -> Iterator[dict[str, np.ndarray]]:
    ds = self.source.records(self.split, self.process_index, self.process_count,
                             epoch=None, seed=0, start=0, stop=None)
    transform = _compiled_eval_transform(self.image_size, float(self.crop_pct))
    ds = _decoded(self.source, ds)
    ds = ds.map(lambda image, label, pos: {'image': transform(image), 'label': label, 'pos': pos},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(self.batch_size)
    if self.prefetch:
      ds = ds.prefetch(self.prefetch)
    ds = ds.with_options(_tf_options())

    self._tracker.start(None, 0)
    emitted = 0
    for batch in ds.as_numpy_iterator():
      self._tracker.see(batch.pop('pos'))
      yield self._pad(batch)
      emitted += 1
    self._tracker.finish(self.shard_size)
    for _ in range(self.num_batches - emitted):  # every process yields num_batches
      yield self._pad(None)

  def _pad(self, batch: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Pads a (possibly partial or absent) batch to batch_size: zero images, mask 0."""
    n, b, s = (0 if batch is None else len(batch['label'])), self.batch_size, self.image_size
    out = {'image': np.zeros((b, s, s, 3), np.float32),  # [B, S, S, 3]
           'label': np.zeros((b,), np.int32),  # [B]
           'mask': np.zeros((b,), np.float32)}  # [B]
    if n:
      out['image'][:n] = batch['image']
      out['label'][:n] = batch['label']
    out['mask'][:n] = 1.0
    return out


def eval_iterator(name: str = 'imagenet2012', *, data_dir: str | None = None, image_size: int,
                  local_batch_size: int, process_index: int = 0, process_count: int = 1,
                  split: str = 'validation', crop_pct: float = 0.875) -> EvalIterator:
  """One pass over this process's shard of an eval split, padded for exactness.

  Every process yields the same number of batches, ceil(max shard size /
  local_batch_size), computed from all shard sizes; the last ones are padded
  with zero images. Batches: ``image`` float32 [B, S, S, 3], ``label`` int32
  [B], ``mask`` float32 [B] (1 = real example, 0 = padding). Preprocessing:
  shorter side -> int(image_size / crop_pct) bicubic + center crop (squash
  resize to image_size x image_size when image_size >= 384).
  """
  return EvalIterator(_get_source(name, data_dir), split=split, image_size=image_size,
                      local_batch_size=local_batch_size, process_index=process_index,
                      process_count=process_count, crop_pct=crop_pct)


def make_global_batch(local_batch: dict, sharding) -> dict:
  """Assembles per-process numpy batches into global jax.Arrays sharded by `sharding`."""
  import jax  # local import: this module must not initialise JAX on import

  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
