"""config.profile_steps: a jax.profiler trace of a few steps, for TensorBoard or Perfetto."""

from __future__ import annotations

import os

import jax

from configs import schema
from trainer import logs


class Profiler:
  """A jax.profiler trace of the steps START..END-1 (config.profile_steps 'START:END') into
  WORKDIR/profile, for TensorBoard's profile plugin (or Perfetto)."""

  def __init__(self, steps: str, workdir: str):
    self.start = self.stop = None
    self.directory = os.path.join(workdir, "profile")
    self.active = False
    if steps:
      self.start, self.stop = schema.parse_profile_steps(steps)

  def before(self, step: int) -> None:
    if self.start is not None and step == self.start and not self.active:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, outputs) -> None:
    if self.active and step >= self.stop:
      jax.block_until_ready(outputs)
      self.close()
      logs.say(f"Wrote a profile of steps {self.start}..{self.stop - 1} to {self.directory}.")

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
