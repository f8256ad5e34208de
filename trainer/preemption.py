"""Stopping cleanly when asked: a preemption notice (SIGTERM) or Ctrl-C saves at the next step."""

from __future__ import annotations

import logging
import signal
import threading

import jax


class PreemptionWatch:
  """Turns SIGTERM (a preemption notice) and a first Ctrl-C into a flag the loop polls, so it
  saves a checkpoint at the next step and exits cleanly. A second Ctrl-C stops at once
  (KeyboardInterrupt), without saving.

  With several processes, JAX's own preemption sync point makes every process stop at the same
  step on SIGTERM (the coordinator forwards the notice); Ctrl-C there is the default one.
  """

  def __init__(self):
    self._flag = threading.Event()
    self.reason = None
    self._previous = {}
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._on_signal)

  def _on_signal(self, signum, frame):
    if signum == signal.SIGINT:
      self.reason = "interrupted (Ctrl-C)"
      signal.signal(signal.SIGINT, self._previous.pop(signal.SIGINT))  # a second one stops now
      logging.warning(
        "Ctrl-C: saving a checkpoint at the next step, then stopping. Ctrl-C again "
        "stops at once, without saving."
      )
    else:
      self.reason = "preemption notice (SIGTERM)"
      logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self._flag.set()

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      if multihost_utils.reached_preemption_sync_point(step):
        self.reason = "preemption notice"
        return True
      return False
    return self._flag.is_set()

  def close(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}
