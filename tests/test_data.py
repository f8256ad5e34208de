"""Tests of the input pipeline (fcmae/data.py) and augmentations (fcmae/augment.py).

Everything runs offline on tiny data: the built-in demo set, small image folders
written to tmp_path, and a tiny TFDS dataset generated on disk.
"""

import io
import logging
import math
import os
import socket

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from fcmae import augment as A
from fcmae import data as D

MEAN = np.array(D.IMAGENET_MEAN, np.float32)
STD = np.array(D.IMAGENET_STD, np.float32)
S = 32  # image size used by most tests (small = fast)


def to_pixels(x: np.ndarray) -> np.ndarray:
  """Inverse of the normalization: float [..., 3] -> [0, 255] pixel values."""
  return (x * STD + MEAN) * 255.0


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture
def no_network(monkeypatch):
  """Any attempt to open a network connection fails the test."""

  def refuse(*args, **kwargs):
    raise AssertionError(f'network access attempted: {args}')

  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)


# ---------------------------------------------------------------------------
# Demo source
# ---------------------------------------------------------------------------

def _fft_features(images):
  """Translation/colour-invariant features: |FFT| of the standardized luma."""
  g = images.astype(np.float32).mean(-1)
  g = (g - g.mean((1, 2), keepdims=True)) / (g.std((1, 2), keepdims=True) + 1e-6)
  f = np.abs(np.fft.fft2(g)).reshape(len(images), -1)
  return f / np.linalg.norm(f, axis=1, keepdims=True)


def test_demo_data_is_deterministic_balanced_and_learnable():
  train_x, train_y = D.demo_arrays('train')
  val_x, val_y = D.demo_arrays('validation')
  num_classes = len(D.DEMO_CLASSES)
  assert num_classes >= 10
  assert train_x.shape == (len(train_y), 64, 64, 3) and train_x.dtype == np.uint8
  assert train_y.dtype == np.int32 and val_x.shape[1:] == (64, 64, 3)
  assert np.bincount(train_y).tolist() == [len(train_y) // num_classes] * num_classes
  assert np.bincount(val_y).tolist() == [len(val_y) // num_classes] * num_classes
  assert len(train_y) >= 1000
  # Same images on every call (bypassing the cache) and train != val.
  again_x, again_y = D.demo_arrays.__wrapped__('train')
  np.testing.assert_array_equal(again_x, train_x)
  np.testing.assert_array_equal(again_y, train_y)
  assert not np.array_equal(train_x[:len(val_x)], val_x)
  # Images have structure (not flat) ...
  assert train_x.reshape(len(train_x), -1).std(1).min() > 10
  # ... and the classes are visually distinct: a nearest-class-mean classifier
  # on |FFT| features fit on train is far above chance (1/12) on val.
  feats_train, feats_val = _fft_features(train_x), _fft_features(val_x)
  means = np.stack([feats_train[train_y == c].mean(0) for c in range(num_classes)])
  pred = np.argmin(((feats_val[:, None] - means[None]) ** 2).sum(-1), axis=1)
  accuracy = (pred == val_y).mean()
  assert accuracy > 0.7, accuracy


def test_dataset_info_demo():
  info = D.dataset_info('demo')
  assert info == D.DatasetInfo(num_classes=len(D.DEMO_CLASSES), num_train_examples=1200,
                               num_eval_examples=240)


# ---------------------------------------------------------------------------
# Training iterator on the demo source
# ---------------------------------------------------------------------------

def test_train_batches_shapes_dtypes_and_normalization():
  it = D.train_iterator('demo', image_size=S, local_batch_size=8, seed=0)
  for batch in take(it, 3):
    assert set(batch) == {'image', 'label'}
    assert batch['image'].shape == (8, S, S, 3) and batch['image'].dtype == np.float32
    assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32
    assert batch['label'].min() >= 0 and batch['label'].max() < len(D.DEMO_CLASSES)
    pixels = to_pixels(batch['image'])
    assert pixels.min() > -0.01 and pixels.max() < 255.01
    # uint8 pixels went through (x / 255 - mean) / std: inverting gives integers.
    np.testing.assert_allclose(pixels, np.round(pixels), atol=2e-3)
  assert it.steps_per_epoch == 1200 // 8 and it.step == 3 and it.epoch == 0


def test_augment_none_gives_the_eval_crops_in_shuffled_order():
  # The eval pass over 'train' (natural order) and an epoch of the training
  # stream with augment='none' must contain the same (image, label) pairs.
  evaluated = _real_examples(D.eval_iterator('demo', image_size=S, local_batch_size=100,
                                             split='train'))
  it = D.train_iterator('demo', image_size=S, local_batch_size=100, seed=3, augment='none')
  epoch = take(it, it.steps_per_epoch)
  trained = sorted((int(l), x.tobytes()) for b in epoch for x, l in zip(b['image'], b['label']))
  assert trained == evaluated
  order = np.concatenate([b['label'] for b in epoch])
  assert not np.array_equal(order, D.demo_arrays('train')[1])  # shuffled


def test_same_seed_same_stream_and_different_seed_differs():
  a = take(D.train_iterator('demo', image_size=S, local_batch_size=8, seed=7), 3)
  b = take(D.train_iterator('demo', image_size=S, local_batch_size=8, seed=7), 3)
  c = take(D.train_iterator('demo', image_size=S, local_batch_size=8, seed=8), 3)
  assert_same_batches(a, b)
  assert not np.array_equal(a[0]['image'], c[0]['image'])
  assert not all(np.array_equal(x['label'], y['label']) for x, y in zip(a, c))


def test_stream_does_not_depend_on_parallelism_or_prefetch(monkeypatch):
  kwargs = dict(image_size=S, local_batch_size=8, seed=1, augment='finetune')
  reference = take(D.train_iterator('demo', **kwargs), 3)
  monkeypatch.setenv('FCMAE_DATA_THREADS', '1')
  serial = take(D.train_iterator('demo', prefetch=0, **kwargs), 3)
  assert_same_batches(reference, serial)


@pytest.mark.parametrize('augment', ['pretrain', 'finetune'])
def test_resume_is_exact_within_and_across_epochs(augment):
  # Process 1 of 10, 16 per process -> global batch 160 -> 1200 // 160 = 7 steps per epoch.
  kwargs = dict(image_size=S, local_batch_size=16, seed=11, process_index=1, process_count=10,
                augment=augment)
  fresh_it = D.train_iterator('demo', **kwargs)
  assert fresh_it.steps_per_epoch == 7
  fresh = take(fresh_it, 10)
  for start in (3, 6):  # inside epoch 0; across the 0 -> 1 boundary
    resumed_it = D.train_iterator('demo', start_step=start, **kwargs)
    assert resumed_it.step == start
    assert_same_batches(take(resumed_it, 3), fresh[start:start + 3])
  # Epoch 1 is a different order.
  epoch0 = np.concatenate([b['label'] for b in fresh[:7]])
  epoch1 = np.concatenate([b['label'] for b in fresh[7:10]])
  assert not np.array_equal(epoch0[:len(epoch1)], epoch1)


def test_resume_far_ahead_is_cheap():
  # Step 10**6 of a 9-step epoch (1200 // (32 x 4)): must not decode a million batches.
  it = D.train_iterator('demo', image_size=S, local_batch_size=32, seed=0, start_step=10**6,
                        process_index=0, process_count=4)
  assert it.steps_per_epoch == 9 and it.epoch == 10**6 // 9
  assert next(it)['image'].shape == (32, S, S, 3)


def _assert_process_count_invariant(name, *, runs, process_count, local_batch_size, **kwargs):
  """Concatenating the processes' step-k batches gives the 1-process step-k batch.

  runs: (start_step, number of steps) pairs.
  """
  global_batch = local_batch_size * process_count
  for start, steps in runs:
    single_it = D.train_iterator(name, local_batch_size=global_batch, start_step=start,
                                 **kwargs)
    single = take(single_it, steps)
    per_process = []
    for index in range(process_count):
      it = D.train_iterator(name, local_batch_size=local_batch_size, start_step=start,
                            process_index=index, process_count=process_count, **kwargs)
      assert it.steps_per_epoch == single_it.steps_per_epoch
      per_process.append(take(it, steps))
    merged = [{k: np.concatenate([p[step][k] for p in per_process]) for k in single[0]}
              for step in range(steps)]
    assert_same_batches(merged, single)
  return single_it.steps_per_epoch


def test_demo_stream_does_not_depend_on_process_count():
  # 1200 examples, global batch 200 -> 6 steps per epoch; steps 0-1, then 4-7
  # resumed (crosses the epoch boundary at 6).
  steps_per_epoch = _assert_process_count_invariant(
      'demo', runs=[(0, 2), (4, 4)], process_count=2, local_batch_size=100,
      image_size=16, seed=4, augment='pretrain')
  assert steps_per_epoch == 6


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match='augment'):
    D.train_iterator('demo', image_size=S, local_batch_size=8, seed=0, augment='nope')
  with pytest.raises(ValueError, match='unknown augment_options'):
    D.train_iterator('demo', image_size=S, local_batch_size=8, seed=0,
                     augment_options={'re_prob': 0.1})
  with pytest.raises(ValueError, match='local_batch_size'):
    D.train_iterator('demo', image_size=S, local_batch_size=5000, seed=0)
  with pytest.raises(ValueError):
    D.eval_iterator('demo', image_size=S, local_batch_size=8, process_index=3, process_count=3)


# ---------------------------------------------------------------------------
# Exact evaluation
# ---------------------------------------------------------------------------

def _real_examples(batches):
  """Multiset of (label, image bytes) of the real (mask=1) examples."""
  out = []
  for b in batches:
    assert b['mask'].dtype == np.float32 and set(np.unique(b['mask'])) <= {0.0, 1.0}
    for image, label, m in zip(b['image'], b['label'], b['mask']):
      if m:
        out.append((int(label), image.tobytes()))
      else:
        assert not image.any() and label == 0  # padding is zeros
  return sorted(out)


@pytest.mark.parametrize('process_count', [3, 7])
def test_eval_is_exact_with_padding_and_simulated_processes(process_count):
  batch_size = 7  # 240 val images: no process shard is a multiple of 7
  single = list(D.eval_iterator('demo', image_size=S, local_batch_size=batch_size))
  assert len(single) == math.ceil(240 / batch_size)
  assert sum(b['mask'].sum() for b in single) == 240
  assert single[-1]['mask'].sum() == 240 % batch_size
  reference = _real_examples(single)
  assert len(reference) == 240

  union, lengths = [], []
  for index in range(process_count):
    it = D.eval_iterator('demo', image_size=S, local_batch_size=batch_size, process_index=index,
                         process_count=process_count)
    batches = list(it)
    assert len(batches) == len(it)
    lengths.append(len(batches))
    for b in batches:
      assert b['image'].shape == (batch_size, S, S, 3) and b['label'].dtype == np.int32
    union += _real_examples(batches)
  assert len(set(lengths)) == 1  # every process runs the same number of eval steps
  assert lengths[0] == math.ceil(math.ceil(240 / process_count) / batch_size)
  assert sorted(union) == reference  # every example exactly once


def test_eval_geometry():
  image = tf.constant(np.random.default_rng(0).integers(0, 256, (100, 200, 3), np.uint8))
  out = A.eval_resize_crop(image, 32, crop_pct=0.875)  # short side -> int(32 / 0.875) = 36
  assert out.shape == (32, 32, 3) and out.dtype == tf.uint8
  resized = A.resize_shorter_side(image, 36)
  assert resized.shape == (36, 72, 3)
  np.testing.assert_array_equal(out.numpy(), resized.numpy()[2:34, 20:52])
  big = A.eval_resize_crop(image, 384)  # >= 384: squash, no crop
  assert big.shape == (384, 384, 3)


# ---------------------------------------------------------------------------
# Folder source (with corrupt files)
# ---------------------------------------------------------------------------

GOOD_TRAIN = {  # file -> (class, colour); colours are far apart so JPEG noise is harmless
    'cat/a.png': ('cat', (200, 30, 30)),
    'cat/b.JPG': ('cat', (30, 200, 30)),
    'cat/c.bmp': ('cat', (30, 30, 200)),
    'dog/d.jpeg': ('dog', (200, 200, 30)),
    'dog/e.gif': ('dog', (200, 30, 200)),
    'dog/sub/f.webp': ('dog', (30, 200, 200)),
}
GOOD_VAL = {
    'cat/g.png': ('cat', (120, 120, 120)),
    'dog/h.png': ('dog', (250, 250, 250)),
    'dog/i.jpg': ('dog', (10, 10, 10)),
}
GOOD_TRAIN_CLASSES = [cls for cls, _ in GOOD_TRAIN.values()]
CORRUPT = ('cat/bad.jpg', 'dog/trunc.jpeg')


def _write_image(path, colour, size):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new('RGB', size, colour).save(path, format={
      '.jpg': 'JPEG', '.jpeg': 'JPEG', '.png': 'PNG', '.bmp': 'BMP', '.gif': 'GIF',
      '.webp': 'WEBP'}[os.path.splitext(path)[1].lower()])


@pytest.fixture
def image_folder(tmp_path):
  root = tmp_path / 'ds'
  for split, files in (('train', GOOD_TRAIN), ('val', GOOD_VAL)):
    for k, (rel, (_, colour)) in enumerate(files.items()):
      _write_image(str(root / split / rel), colour, (24 + 5 * k, 40 - 3 * k))
  (root / 'train' / 'cat' / 'bad.jpg').write_bytes(b'this is not an image at all' * 20)
  buf = io.BytesIO()
  noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3), np.uint8)
  Image.fromarray(noise).save(buf, format='JPEG')
  (root / 'train' / 'dog' / 'trunc.jpeg').write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
  (root / 'train' / 'dog' / 'notes.txt').write_text('not an image extension: ignored')
  return root


def _identify(images, palette):
  """Index into `palette` of each (solid-colour) normalized image, by nearest colour."""
  colours = to_pixels(images).reshape(len(images), -1, 3).mean(1)  # [N, 3]
  dist = np.abs(colours[:, None] - np.array(palette, np.float32)[None]).max(-1)
  assert (dist.min(1) < 6).all(), dist.min(1)
  return dist.argmin(1).tolist()


def test_folder_info_and_eval_with_corrupt_files(image_folder, caplog):
  name = f'folder:{image_folder}'
  info = D.dataset_info(name)
  assert info == D.DatasetInfo(num_classes=2, num_train_examples=8, num_eval_examples=3)

  before = D.skipped_images()
  palette = [c for _, c in GOOD_TRAIN.values()]
  with caplog.at_level(logging.WARNING, logger='fcmae.data'):
    it = D.eval_iterator(name, image_size=16, local_batch_size=3, split='train')
    batches = list(it)
  assert len(batches) == math.ceil(8 / 3)
  assert it.num_skipped == 2 and D.skipped_images() - before == 2
  assert sum(b['mask'].sum() for b in batches) == 6
  real = [(img, lab) for b in batches for img, lab, m in zip(b['image'], b['label'], b['mask'])
          if m]
  ids = _identify(np.stack([img for img, _ in real]), palette)
  assert sorted(ids) == list(range(6))  # every good image exactly once
  classes = [cls for cls, _ in GOOD_TRAIN.values()]
  assert [['cat', 'dog'][lab] for _, lab in real] == [classes[i] for i in ids]
  logged = caplog.text
  assert 'bad.jpg' in logged and 'trunc.jpeg' in logged

  val = list(D.eval_iterator(name, image_size=16, local_batch_size=2))
  val_ids = _identify(np.stack([b['image'][i] for b in val for i in range(2) if b['mask'][i]]),
                      [c for _, c in GOOD_VAL.values()])
  assert sorted(val_ids) == [0, 1, 2]


def _epoch_order_paths(name, seed, epoch, split='train'):
  """White box: the file paths of a folder source's global order of `epoch`."""
  source = D._get_source(name, None)
  n = source.split_size(split)
  index = source.order_indices(split, D._derived_seed(seed, D._ORDER_TAG), epoch, np.arange(n))
  return [source.example_name(split, int(i)) for i in index.numpy()]


def test_folder_training_survives_corrupt_files(image_folder, caplog):
  name = f'folder:{image_folder}'
  palette = [c for _, c in GOOD_TRAIN.values()]
  good = {str(image_folder / 'train' / rel): k for k, rel in enumerate(GOOD_TRAIN)}
  before = D.skipped_images()
  it = D.train_iterator(name, image_size=16, local_batch_size=2, seed=0, augment='none')
  assert it.steps_per_epoch == 4  # 8 files // 2, corrupt files included
  with caplog.at_level(logging.WARNING, logger='fcmae.data'):
    batches = take(it, 12)  # 3 epochs; every batch is full
  assert all(b['image'].shape == (2, 16, 16, 3) for b in batches)
  assert it.num_skipped == 6 and D.skipped_images() - before == 6  # 2 corrupt files x 3 epochs
  assert 'bad.jpg' in caplog.text and 'trunc.jpeg' in caplog.text
  for epoch in range(3):
    ids = _identify(np.concatenate([b['image'] for b in batches[4 * epoch:4 * epoch + 4]]),
                    palette)
    labels = np.concatenate([b['label'] for b in batches[4 * epoch:4 * epoch + 4]])
    assert [['cat', 'dog'][l] for l in labels] == [GOOD_TRAIN_CLASSES[i] for i in ids]
    # Slot p holds the first decodable image at positions p, p+1, ... of the
    # epoch's global order (wrapping around): every good image at least once,
    # the one after a corrupt run twice (or three times).
    order = _epoch_order_paths(name, 0, epoch)
    expected = [next(good[order[q % 8]] for q in range(p, p + 8) if order[q % 8] in good)
                for p in range(8)]
    assert ids == expected
    assert sorted(set(ids)) == list(range(6))
  # Deterministic despite the skips, and resuming after a skip is exact.
  again = take(D.train_iterator(name, image_size=16, local_batch_size=2, seed=0,
                                augment='none'), 12)
  assert_same_batches(batches, again)
  for start in (1, 3, 6):
    resumed = take(D.train_iterator(name, image_size=16, local_batch_size=2, seed=0,
                                    augment='none', start_step=start), 3)
    assert_same_batches(resumed, batches[start:start + 3])
  pretrain = next(D.train_iterator(name, image_size=16, local_batch_size=2, seed=0))
  assert pretrain['image'].shape == (2, 16, 16, 3)


@pytest.mark.parametrize('process_count,local_batch_size', [(2, 2), (4, 1)])
def test_folder_stream_does_not_depend_on_process_count(image_folder, process_count,
                                                        local_batch_size):
  # 8 files (2 corrupt), global batch 4 -> 2 steps per epoch; the corrupt
  # files' slots are filled identically whichever process owns them.
  steps_per_epoch = _assert_process_count_invariant(
      f'folder:{image_folder}', runs=[(0, 5), (3, 3)], process_count=process_count,
      local_batch_size=local_batch_size, image_size=16, seed=9, augment='pretrain')
  assert steps_per_epoch == 2


def test_folder_all_corrupt_raises(tmp_path):
  root = tmp_path / 'broken'
  for k in range(4):
    (root / 'train' / 'cat').mkdir(parents=True, exist_ok=True)
    (root / 'train' / 'cat' / f'{k}.png').write_bytes(b'garbage')
  (root / 'val' / 'cat').mkdir(parents=True)
  _write_image(str(root / 'val' / 'cat' / 'ok.png'), (1, 2, 3), (8, 8))
  it = D.train_iterator(f'folder:{root}', image_size=8, local_batch_size=2, seed=0)
  with pytest.raises(RuntimeError, match='could be decoded'):
    next(it)


def test_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='missing'):
    D.dataset_info(f'folder:{tmp_path / "missing"}')
  (tmp_path / 'no_train' / 'val' / 'cat').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match='train'):
    D.dataset_info(f'folder:{tmp_path / "no_train"}')

  root = tmp_path / 'extra_val_class'
  _write_image(str(root / 'train' / 'cat' / 'a.png'), (1, 2, 3), (8, 8))
  _write_image(str(root / 'val' / 'bird' / 'b.png'), (1, 2, 3), (8, 8))
  with pytest.raises(ValueError, match="'bird'"):
    D.dataset_info(f'folder:{root}')

  root = tmp_path / 'empty_val'
  _write_image(str(root / 'train' / 'cat' / 'a.png'), (1, 2, 3), (8, 8))
  (root / 'val' / 'cat').mkdir(parents=True)
  with pytest.raises(ValueError, match='no images'):
    D.dataset_info(f'folder:{root}')
  root = tmp_path / 'no_val'
  _write_image(str(root / 'train' / 'cat' / 'a.png'), (1, 2, 3), (8, 8))
  with pytest.raises(FileNotFoundError, match='val'):
    D.dataset_info(f'folder:{root}')


# ---------------------------------------------------------------------------
# TFDS source
# ---------------------------------------------------------------------------

def test_unprepared_tfds_dataset_gives_clear_error(tmp_path, no_network):
  data_dir = str(tmp_path / 'tfds')
  with pytest.raises(D.DatasetNotPreparedError) as err:
    D.dataset_info('imagenet2012', data_dir=data_dir)
  msg = str(err.value)
  assert 'imagenet2012' in msg and data_dir in msg
  assert os.path.join(data_dir, 'downloads', 'manual') in msg
  assert 'by hand' in msg and f'tfds build imagenet2012 --data_dir {data_dir}' in msg
  assert isinstance(err.value, FileNotFoundError)
  with pytest.raises(D.DatasetNotPreparedError):
    D.train_iterator('imagenet2012', data_dir=data_dir, image_size=S, local_batch_size=2, seed=0)
  with pytest.raises(D.DatasetNotPreparedError):
    D.eval_iterator('imagenet2012', data_dir=data_dir, image_size=S, local_batch_size=2)
  assert not os.path.exists(os.path.join(data_dir, 'downloads'))  # nothing was fetched


TFDS_TRAIN, TFDS_VAL, TFDS_CORRUPT_VAL = 40, 17, 5


def _tfds_colour(split, i):
  """A distinct solid colour per example (identifies it after preprocessing)."""
  return (10 + 5 * i, 60 if split == 'train' else 200, 30 + 4 * (i % 7))


class FcmaeTinyTfds(tfds.core.GeneratorBasedBuilder):
  """40 train / 17 validation solid-colour images; validation #5 is corrupt bytes."""

  VERSION = tfds.core.Version('1.0.0')
  # No checksums file next to this module. Also avoids tfds's `code_path`,
  # which imports `importlib_resources` (not a declared dependency on 3.11).
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'label': tfds.features.ClassLabel(num_classes=4)}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples('train', TFDS_TRAIN),
            'validation': self._generate_examples('validation', TFDS_VAL)}

  def _generate_examples(self, split, n):
    for i in range(n):
      if split == 'validation' and i == TFDS_CORRUPT_VAL:
        image = io.BytesIO(b'corrupt record' * 10)
      else:
        image = np.zeros((20 + i % 3, 24, 3), np.uint8) + np.array(_tfds_colour(split, i),
                                                                    np.uint8)
      yield f'{split}{i}', {'image': image, 'label': i % 4}


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  builder = tfds.builder('fcmae_tiny_tfds', data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return data_dir


def _tfds_ids(images, split):
  n = TFDS_TRAIN if split == 'train' else TFDS_VAL
  return _identify(images, [_tfds_colour(split, i) for i in range(n)])


def test_tfds_train_end_to_end(tfds_dir, no_network):
  name = 'fcmae_tiny_tfds'
  assert D.dataset_info(name, data_dir=tfds_dir) == D.DatasetInfo(4, TFDS_TRAIN, TFDS_VAL)
  kwargs = dict(data_dir=tfds_dir, image_size=8, local_batch_size=4, seed=5, augment='none',
                process_count=2)
  shards = []
  for index in range(2):
    it = D.train_iterator(name, process_index=index, **kwargs)
    assert it.steps_per_epoch == 5  # 20 examples per process shard
    batches = take(it, 10)
    ids = [_tfds_ids(np.concatenate([b['image'] for b in batches[e * 5:(e + 1) * 5]]), 'train')
           for e in range(2)]
    labels = np.concatenate([b['label'] for b in batches[:5]])
    assert labels.tolist() == [i % 4 for i in ids[0]]
    assert sorted(ids[0]) == sorted(ids[1]) and len(set(ids[0])) == 20
    assert ids[0] != ids[1]  # reshuffled between epochs
    shards.append(set(ids[0]))
  assert shards[0].isdisjoint(shards[1]) and shards[0] | shards[1] == set(range(TFDS_TRAIN))


def test_tfds_resume_is_exact(tfds_dir):
  kwargs = dict(data_dir=tfds_dir, image_size=8, local_batch_size=4, seed=2, augment='pretrain',
                process_index=1, process_count=2)
  fresh = take(D.train_iterator('fcmae_tiny_tfds', **kwargs), 8)
  resumed = take(D.train_iterator('fcmae_tiny_tfds', start_step=3, **kwargs), 5)
  assert_same_batches(resumed, fresh[3:8])  # crosses the epoch boundary at step 5


def test_tfds_eval_exact_and_skips_corrupt_record(tfds_dir):
  union, lengths, skipped = [], [], 0
  for index in range(3):  # shards of 6, 6, 5 examples
    it = D.eval_iterator('fcmae_tiny_tfds', data_dir=tfds_dir, image_size=8, local_batch_size=4,
                         process_index=index, process_count=3, split='val')
    batches = list(it)
    lengths.append(len(batches))
    skipped += it.num_skipped
    real = np.stack([b['image'][i] for b in batches for i in range(4) if b['mask'][i]])
    union += _tfds_ids(real, 'validation')
  assert lengths == [2, 2, 2] and skipped == 1
  assert sorted(union) == [i for i in range(TFDS_VAL) if i != TFDS_CORRUPT_VAL]


# ---------------------------------------------------------------------------
# Augmentations
# ---------------------------------------------------------------------------

def _seed(i):
  return tf.constant([i, 12345], tf.int64)


def _rand_image(h, w, seed=0):
  return tf.constant(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


@pytest.mark.parametrize('shape', [(50, 80), (7, 5), (300, 10), (10, 300), (64, 64)])
def test_random_resized_crop_output_size(shape):
  image = _rand_image(*shape)
  for i in range(5):
    out = A.random_resized_crop(image, _seed(i), 24, scale=(0.2, 1.0))
    assert out.shape == (24, 24, 3) and out.dtype == tf.uint8


def test_random_resized_crop_full_and_fallback():
  square = _rand_image(40, 40)
  full = A.random_resized_crop(square, _seed(0), 16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_array_equal(full.numpy(), A._resize(square, 16, 16).numpy())
  # 300x10 fits no crop with ratio in [3/4, 4/3] and >= 8% area: central
  # fallback crop of height round(10 / (3/4)) = 13.
  tall = _rand_image(300, 10)
  out = A.random_resized_crop(tall, _seed(1), 16)
  np.testing.assert_array_equal(out.numpy(), A._resize(tall[143:156], 16, 16).numpy())
  # Different seeds give different crops.
  crops = {A.random_resized_crop(square, _seed(i), 16).numpy().tobytes() for i in range(6)}
  assert len(crops) == 6


def test_horizontal_flip_flips_some():
  image = _rand_image(6, 9)
  flipped = 0
  for i in range(20):
    out = A.random_horizontal_flip(image, _seed(i)).numpy()
    if np.array_equal(out, image.numpy()[:, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out, image.numpy())
  assert 3 <= flipped <= 17


def test_rand_augment_ops_individually():
  # Mid-contrast noise over a gradient: no op is a no-op on it.
  rng = np.random.default_rng(1)
  x = (np.linspace(40, 180, S)[None, :, None] + rng.integers(0, 40, (S, S, 3))).astype(np.int32)
  image = tf.constant(x.astype(np.uint8))
  for name in A.RAND_AUGMENT_OPS:
    for sign in (-1.0, 1.0):
      out = A.apply_rand_augment_op(name, image, 9.0, sign,
                                    A.parse_rand_augment('rand-m9-mstd0.5-inc1'))
      assert out.shape == image.shape and out.dtype == tf.uint8, name
      assert not np.array_equal(out.numpy(), image.numpy()), name  # every op does something
  np.testing.assert_array_equal(A.invert(image).numpy(), 255 - x)
  assert set(np.unique(A.posterize(image, 1).numpy())) <= {0, 128}
  np.testing.assert_array_equal(A.solarize(image, 128).numpy(), np.where(x >= 128, 255 - x, x))
  # PIL convention: TranslateX(+p) samples input x + p.
  np.testing.assert_array_equal(A.translate_x(image, 5).numpy()[:, :-5], x[:, 5:])
  np.testing.assert_array_equal(A.rotate(image, 0.0).numpy(), x)
  low = tf.constant(np.random.default_rng(2).integers(100, 140, (S, S, 3), np.uint8))
  stretched = A.auto_contrast(low).numpy()
  assert stretched.min() == 0 and stretched.max() == 255
  equalized = A.equalize(low).numpy()
  assert equalized.max() - equalized.min() > 200
  assert A.brightness(image, 0.0).numpy().max() == 0


def test_rand_augment_and_erasing_are_seeded():
  config = A.parse_rand_augment('rand-m9-mstd0.5-inc1')
  assert config == A.RandAugmentConfig(num_layers=2, magnitude=9.0, magnitude_std=0.5,
                                       increasing=True)
  with pytest.raises(ValueError):
    A.parse_rand_augment('rand-q3')
  image = _rand_image(S, S, seed=3)
  outs = [A.rand_augment(image, _seed(i), config).numpy() for i in range(8)]
  assert all(o.shape == (S, S, 3) and o.dtype == np.uint8 for o in outs)
  assert len({o.tobytes() for o in outs}) >= 5
  np.testing.assert_array_equal(outs[0], A.rand_augment(image, _seed(0), config).numpy())

  x = A.normalize(image)
  np.testing.assert_array_equal(A.random_erasing(x, _seed(0), probability=0.0).numpy(), x.numpy())
  for i in range(5):
    erased = A.random_erasing(x, _seed(i), probability=1.0).numpy()
    changed = np.any(erased != x.numpy(), axis=-1)  # [H, W]
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert changed.sum() == box  # one rectangle
    assert 0.01 < box / (S * S) < 0.4
    assert np.isfinite(erased).all()


def test_train_transforms_keep_shape_and_finite_values():
  image = _rand_image(45, 70, seed=4)
  for augment, options in [('pretrain', None), ('finetune', None),
                           ('finetune', {'randaugment': '', 'reprob': 0.0}), ('none', None)]:
    fn = A.build_train_transform(augment, S, options)
    for i in range(3):
      out = fn(image, _seed(i)).numpy()
      assert out.shape == (S, S, 3) and out.dtype == np.float32 and np.isfinite(out).all()
  it = D.train_iterator('demo', image_size=S, local_batch_size=8, seed=0, augment='finetune',
                        augment_options={'randaugment': 'rand-m9-mstd0.5-inc1', 'reprob': 0.25})
  batch = next(it)
  assert batch['image'].shape == (8, S, S, 3) and np.isfinite(batch['image']).all()


# ---------------------------------------------------------------------------
# Global batches
# ---------------------------------------------------------------------------

def test_make_global_batch():
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  devices = np.array(jax.devices())
  sharding = NamedSharding(Mesh(devices, ('data',)), P('data'))
  batch = next(D.train_iterator('demo', image_size=S, local_batch_size=2 * len(devices), seed=0))
  global_batch = D.make_global_batch(batch, sharding)
  assert global_batch['image'].shape == batch['image'].shape
  assert global_batch['image'].sharding == sharding
  np.testing.assert_array_equal(np.asarray(global_batch['label']), batch['label'])
