"""Training checkpoints: an orbax CheckpointManager over WORKDIR/checkpoints.

One checkpoint per saved step holds the whole train state (step, params, optimizer state, EMA),
restored straight into its shardings; the step is also the data position. Saves are
asynchronous; orbax writes each into a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous checkpoints as they were. The last `keep` are kept.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """Save / resume of the train state in `directory`."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state",))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state) -> None:
    """Starts an asynchronous save of `state` (a pytree of jax.Arrays)."""
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                       force=True)

  def restore(self, abstract_state, step: int | None = None):
    """The state of `step` (default: the latest), placed as abstract_state's shardings say."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def restore_params(path: str) -> dict:
  """The params of a train checkpoint, as host numpy arrays: `path` is a workdir, its
  checkpoints/ directory, or one step's directory (the latest step is taken). Used to initialise
  finetuning and by the reconstruction pictures; works whatever mesh wrote the checkpoint."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  if not os.path.isdir(os.path.join(path, "state")):
    steps = ocp.utils.checkpoint_steps(path) if os.path.isdir(path) else []
    if not steps:
      raise FileNotFoundError(f"No train checkpoint (a workdir or checkpoints/<step>) at {path}.")
    path = os.path.join(path, str(max(steps)))
  checkpointer = ocp.PyTreeCheckpointer()
  state_dir = os.path.join(path, "state")
  metadata = checkpointer.metadata(state_dir)
  tree = getattr(metadata, "item_metadata", None) or getattr(metadata, "tree", None) or metadata
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), dict(tree))
  state = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return state["params"]


class PreemptionWatch:
  """Turns SIGTERM into a flag the loop polls, so it can save and exit cleanly.

  With several processes, JAX's own preemption sync point makes every process stop at the same
  step (the coordinator forwards the notice).
  """

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self._flag.set()

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
