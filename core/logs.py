"""Run logs: WORKDIR/metrics.jsonl, TensorBoard events, and a progress line with an ETA.

Only process 0 writes; the other processes get a writer that does nothing. The workdir may be a
local directory or gs://BUCKET/PATH (core/storage.py): a row is in metrics.jsonl and its
scalars in the events file before the progress line reports it. The events are written by
tensorboardX; in a bucket through storage.Log, which appends without rewriting the object. With
a W&B run (core/wandb_writer.py) the scalars go there too.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time

import jax

from core import storage

# What every progress line shows when a row has it; each task adds its own metrics' names.
SHOWN = ("loss", "lr", "images_per_sec", "skipped_images")


class MetricWriter:
  """Appends one JSON object per logged step and mirrors the scalars to TensorBoard. `shown`:
  the metrics the progress line names, in its order. `wandb`: a core.wandb_writer.Run that gets
  the scalars too (and is closed with the writer)."""

  def __init__(
    self,
    workdir: str,
    total_steps: int,
    *,
    shown: tuple[str, ...] = SHOWN,
    enabled: bool | None = None,
    wandb=None,
  ):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.total_steps, self.shown = total_steps, shown
    self._start_time = None
    self._start_step = None
    self._jsonl = None
    self._tb = None
    self._wandb = wandb
    if self.enabled:
      self._jsonl = storage.Log(os.path.join(workdir, "metrics.jsonl"))
      self._tb = EventWriter(os.path.join(workdir, "tensorboard"))

  def start(self, step: int) -> None:
    """Marks where the ETA is measured from (after the first, compiling, step)."""
    self._start_time, self._start_step = time.time(), step

  def write(
    self, step: int, metrics: dict, *, progress: bool = True, summary: bool = False
  ) -> None:
    """`summary`: figures of the whole run (the cost report), a W&B run's summary."""
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    if not self.enabled:
      return
    self._jsonl.write(json.dumps(record) + "\n")
    scalars = {
      k: v
      for k, v in record.items()
      if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    self._tb.scalars(int(step), scalars)
    if self._wandb is not None:
      if summary:
        self._wandb.summary(scalars)
      else:
        self._wandb.scalars(int(step), scalars)
    if progress:
      say(self._progress_line(step, record))
      retried = storage.retries_since_last()
      if retried:
        say(retried)

  def _progress_line(self, step: int, record: dict) -> str:
    parts = [f"step {step}/{self.total_steps}"]
    for key in self.shown:
      if key in record:
        value = record[key]
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    if self._start_time is not None and step > self._start_step:
      rate = (time.time() - self._start_time) / (step - self._start_step)
      parts.append(f"ETA {_duration(rate * (self.total_steps - step))}")
    return ", ".join(parts)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._tb.close()
      self._jsonl = self._tb = None
    if self._wandb is not None:
      self._wandb.close()
      self._wandb = None


class EventWriter:
  """One TensorBoard event file in a local directory or under gs://, written by tensorboardX's
  SummaryWriter; each call returns once its events are stored (flushed)."""

  def __init__(self, directory: str):
    from tensorboardX import SummaryWriter, record_writer

    if storage.is_remote(directory):
      storage.path(directory)  # gs:// only after storage.setup()
      record_writer.register_writer_factory("gs", _BucketFiles())
    # A name of its own, in the order of opening: TensorBoard reads the files in name order, and
    # several writers may open one in the same directory within a second.
    self._writer = SummaryWriter(
      directory, flush_secs=10**6, filename_suffix=f".{time.time_ns()}.{os.getpid()}"
    )

  def scalars(self, step: int, values: dict) -> None:
    for tag, value in values.items():
      self._writer.add_scalar(tag, float(value), step)
    self._writer.flush()

  def image(self, step: int, tag: str, picture) -> None:
    """`picture`: uint8 (height, width, 3)."""
    self._writer.add_image(tag, picture, step, dataformats="HWC")
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class _BucketFile:
  """An event file in a bucket for tensorboardX's record writer: its records are kept until
  `flush`, which appends them to the object (storage.Log)."""

  def __init__(self, p: str):
    self._log = storage.Log(p, binary=True)
    self._pending = bytearray()
    self._lock = threading.Lock()  # the writer's thread and its caller may both flush

  def write(self, data: bytes) -> None:
    with self._lock:
      self._pending += data

  def flush(self) -> None:
    with self._lock:
      if self._pending:
        self._log.write(bytes(self._pending))
        self._pending.clear()

  def close(self) -> None:
    self.flush()
    self._log.close()


class _BucketFiles:
  """tensorboardX's writer factory for gs:// (its own rewrites the whole object on each flush,
  through a client that cannot be pointed at the emulator)."""

  def open(self, p: str) -> _BucketFile:
    return _BucketFile(p)

  def directory_check(self, p: str) -> None:
    del p  # a bucket has no directories to make


def say(message: str) -> None:
  """A line for the person watching the console (process 0 only), with the time."""
  if jax.process_index() == 0:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _plain(value):
  """JSON-friendly scalars from numpy / jax values."""
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def read_metrics(workdir: str) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl, in order (for tests and analysis)."""
  text = storage.read_text(os.path.join(workdir, "metrics.jsonl"))
  return [json.loads(line) for line in text.splitlines() if line.strip()]
