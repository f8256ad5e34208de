"""config.profile_steps: a jax.profiler trace of a few steps, for TensorBoard or Perfetto."""

from __future__ import annotations

import contextlib
import os

import jax

from configs import checks
from core import logs, storage


class Profiler:
  """A jax.profiler trace of the steps START..END-1 (config.profile_steps 'START:END') into
  WORKDIR/profile, for TensorBoard's profile plugin (or Perfetto). The profiler writes local
  files: for a gs:// workdir it traces into a temporary directory, copied up when it stops."""

  def __init__(self, steps: str, workdir: str):
    self.start = self.stop = None
    self.directory = os.path.join(workdir, "profile")
    self.active = False
    self._upload = contextlib.ExitStack()
    if steps:
      self.start, self.stop = checks.profile_bounds(steps)  # checked by the schema

  def before(self, step: int) -> None:
    if self.start is not None and step == self.start and not self.active:
      local = self._upload.enter_context(storage.local_directory(self.directory))
      jax.profiler.start_trace(local)
      self.active = True

  def after(self, step: int, outputs) -> None:
    if self.active and step >= self.stop:
      jax.block_until_ready(outputs)
      self.close()
      logs.say(f"Wrote a profile of steps {self.start}..{self.stop - 1} to {self.directory}.")

  def close(self) -> None:
    if self.active:
      self.active = False
      try:
        jax.profiler.stop_trace()
      finally:
        self._upload.close()
