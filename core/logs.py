"""Run logs: WORKDIR/metrics.jsonl, TensorBoard events, and a progress line with an ETA.

Only process 0 writes; the other processes get a writer that does nothing. The workdir may be a
local directory or gs://BUCKET/PATH (core/storage.py): a row is in metrics.jsonl and its
scalars in the events file before the progress line reports it.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import time

import jax

from core import storage


class MetricWriter:
  """Appends one JSON object per logged step and mirrors the scalars to TensorBoard."""

  def __init__(self, workdir: str, total_steps: int, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.total_steps = total_steps
    self._start_time = None
    self._start_step = None
    self._jsonl = None
    self._tb = None
    if self.enabled:
      self._jsonl = storage.Log(os.path.join(workdir, "metrics.jsonl"))
      self._tb = EventWriter(os.path.join(workdir, "tensorboard"))

  def start(self, step: int) -> None:
    """Marks where the ETA is measured from (after the first, compiling, step)."""
    self._start_time, self._start_step = time.time(), step

  def write(self, step: int, metrics: dict, *, progress: bool = True) -> None:
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    if not self.enabled:
      return
    self._jsonl.write(json.dumps(record) + "\n")
    self._tb.scalars(
      int(step), {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
    )
    if progress:
      say(self._progress_line(step, record))

  def _progress_line(self, step: int, record: dict) -> str:
    parts = [f"step {step}/{self.total_steps}"]
    for key in (
      "loss",
      "lr",
      "images_per_sec",
      "reconstruction_loss",
      "top1",
      "top5",
      "ema_top1",
      "knn_top1",
      "linear_top1",
      "skipped_images",
    ):
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


class EventWriter:
  """TensorBoard event files (TFRecord-framed Event protos, as tf.summary writes them) in a
  local directory or under gs://, through storage.Log. A new file is begun per writer, and
  again past `roll_bytes`, so a GCS object written again whole on each flush stays small."""

  def __init__(self, directory: str, roll_bytes: int = 4 << 20):
    self.directory, self.roll_bytes = directory, roll_bytes
    self._log = None
    self._count = 0

  def _file(self):
    if self._log is None or self._log.size > self.roll_bytes:
      self.close()
      name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
      self._log = storage.Log(os.path.join(self.directory, f"{name}.{self._count}"), binary=True)
      self._count += 1
      from tensorboard.compat.proto import event_pb2

      self._log.write(_record(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")))
    return self._log

  def scalars(self, step: int, values: dict) -> None:
    from tensorboard.compat.proto import summary_pb2

    if values:
      summary = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()]
      )
      self._write(step, summary)

  def image(self, step: int, tag: str, png: bytes, height: int, width: int) -> None:
    from tensorboard.compat.proto import summary_pb2

    image = summary_pb2.Summary.Image(
      height=height, width=width, colorspace=3, encoded_image_string=png
    )
    self._write(step, summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=image)]))

  def _write(self, step: int, summary) -> None:
    from tensorboard.compat.proto import event_pb2

    event = event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
    self._file().write(_record(event))

  def close(self) -> None:
    if self._log is not None:
      self._log.close()
      self._log = None


def _record(event) -> bytes:
  """One TFRecord: length, its masked CRC32C, the data, its masked CRC32C."""
  from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

  data = event.SerializeToString()
  header = struct.pack("<Q", len(data))
  return (
    header
    + struct.pack("<I", masked_crc32c(header))
    + data
    + struct.pack("<I", masked_crc32c(data))
  )


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
