"""The training stream of folder/demo sources: one global order per epoch, the same stream
whatever the number of processes.

The whole split is an in-memory array of images or file names. Epoch ``e`` visits it in ONE
global order, ``tf.random.experimental.index_shuffle`` keyed by (seed, e) only, which gives the
split index at any position without materialising the permutation. With ``b =
local_batch_size`` and ``G = b * process_count``, global batch ``k`` of an epoch is positions
[k*G, (k+1)*G) of that order and process ``i`` reads [k*G + i*b, k*G + (i+1)*b);
``steps_per_epoch = N // G`` (the epoch's remainder is dropped globally). The example at position
``p`` is augmented with the stateless seed (f(seed), e * 2**32 + p), with no process index, so
the concatenation over processes of their step-``k`` batches is bit-identical to the step-``k``
batch of one process with ``local_batch_size = G``. Global step ``s`` reads (epoch, step in
epoch) = divmod(s, steps_per_epoch) and builds its own small tf.data pipeline
(``Dataset.range(start_step, inf).interleave(step)``, a few steps in flight), so a stream from
step k starts there in O(1) without touching anything before it, and there is no stall between
epochs. It does not depend on the tf.data parallelism or prefetch either.

Corrupt images (``data/skips.py``): the batch size never changes. A slot (epoch e, position p)
whose image is corrupt is filled with the first decodable image at positions p+1, p+2, ... of the
same epoch's global order (wrapping around; decoded in Python, eagerly, off the fast path) and
augmented with the seed of slot p. The filler is a function of the global order only, so the
stream stays invariant to the process count and resuming anywhere stays exact; the cost is that
the filler image appears twice (more after a run of corrupt images) in that epoch, differently
augmented. A lookahead of ``MAX_FILL_TRIES`` consecutive undecodable images raises RuntimeError.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow as tf

from data.skips import add_skipped, transformed
from data.sources import num_threads
from data.stream import TrainStream, example_seed

logger = logging.getLogger(__name__)

# Folder/demo: how many positions past a corrupt one are tried to fill its slot.
MAX_FILL_TRIES = 100
_MAX_STEPS = 1 << 62  # "infinite" (Dataset.range of global steps)


@dataclasses.dataclass
class GlobalTrainStream(TrainStream):
  """Folder/demo: one global order per epoch, process i reads its slice of each global batch."""

  order_base: int  # first word of every epoch's order key
  skipped: int = 0

  @property
  def num_skipped(self) -> int:
    return self.skipped

  def _first_position(self, step_in_epoch):
    """Position (in the epoch's global order) of this process's first example of a step."""
    return (
      step_in_epoch * self.batch_size * self.process_count + self.process_index * self.batch_size
    )

  def step_batches(self, start_step: int) -> tf.data.Dataset:
    """One element per global step >= start_step: this process's decodable examples of it.

    Elements: image uint8 [<=B, S, S, C], label int32 [<=B], pos int64 [<=B]
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
      ds = ds.map(lambda i, p: (tf.gather(payloads, i), tf.gather(labels, i), p))
      # Corrupt images are dropped here; _complete fills their slots in Python.
      ds = transformed(source, transform, ds, lambda p: example_seed(aug_base, epoch, p))
      empty = tf.data.Dataset.from_tensors(
        {
          "image": tf.zeros([0, size, size, self.channels], tf.uint8),
          "label": tf.zeros([0], tf.int32),
          "pos": tf.zeros([0], tf.int64),
        }
      )
      ds = ds.batch(b).concatenate(empty).take(1)
      return ds.map(lambda batch: {**batch, "step": step})

    # A few steps in flight so the threads stay busy across step boundaries;
    # deterministic interleave of one-element datasets keeps the step order.
    cycle = max(2, min(16, -(-2 * num_threads() // b)))
    return tf.data.Dataset.range(start_step, _MAX_STEPS).interleave(
      step_batch, cycle_length=cycle, block_length=1, num_parallel_calls=cycle, deterministic=True
    )

  def batches(self, start_step):
    for step, batch in enumerate(self.numpy_iterator(self.step_batches(start_step)), start_step):
      assert int(batch["step"]) == step, (int(batch["step"]), step)
      yield self._complete(step, batch)

  def _complete(self, step: int, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The full batch of `step`: fills the slots of corrupt images (see _fill)."""
    b = self.batch_size
    if len(batch["label"]) == b:
      return {"image": batch["image"], "label": batch["label"]}  # the fast path
    epoch, k = divmod(step, self.steps_per_epoch)
    first = self._first_position(k)
    s = self.image_size
    image = np.empty((b, s, s, self.channels), np.uint8)  # [B, S, S, C]
    label = np.empty((b,), np.int32)  # [B]
    present = np.zeros((b,), bool)
    slots = batch["pos"] - first
    image[slots], label[slots], present[slots] = batch["image"], batch["label"], True
    for j in np.flatnonzero(~present):
      image[j], label[j] = self._fill(epoch, first + int(j))
    return {"image": image, "label": label}

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
    add_skipped(1)
    seed = example_seed(self.aug_base, epoch, pos)
    for q in range(pos + 1, pos + 1 + min(n - 1, MAX_FILL_TRIES)):
      index = int(source.order_indices(split, self.order_base, epoch, q % n))
      try:
        image = self.transform.decode(source.read(tf.gather(payloads, index)), seed)
      except tf.errors.OpError:
        continue
      logger.warning(
        "Skipped corrupt or unreadable image: %s (epoch %d, position %d); its slot "
        "is filled with the next decodable image of the epoch order, %s",
        source.example_name(split, own),
        epoch,
        pos,
        source.example_name(split, index),
      )
      return self.transform.finish(image, seed).numpy(), int(labels[index])
    raise RuntimeError(
      f"Skipped corrupt or unreadable image {source.example_name(split, own)} (epoch {epoch}, "
      f"position {pos}) and none of the next {min(n - 1, MAX_FILL_TRIES)} images of the "
      f"epoch order of {source.name} split {split!r} could be decoded either: is the data "
      f"readable?"
    )
