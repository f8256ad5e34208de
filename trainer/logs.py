"""Run logs: WORKDIR/metrics.jsonl, TensorBoard events, and a progress line with an ETA.

Only process 0 writes; the other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax


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
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
      import tensorflow as tf  # TensorBoard event files, CPU only

      self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

  def start(self, step: int) -> None:
    """Marks where the ETA is measured from (after the first, compiling, step)."""
    self._start_time, self._start_step = time.time(), step

  def write(self, step: int, metrics: dict, *, progress: bool = True) -> None:
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    if not self.enabled:
      return
    self._jsonl.write(json.dumps(record) + "\n")
    import tensorflow as tf

    with self._tb.as_default(step=int(step)):
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)):
          tf.summary.scalar(key, value)
    self._tb.flush()
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
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
