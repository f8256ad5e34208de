"""Training checkpoints: an orbax CheckpointManager over WORKDIR/checkpoints.

One checkpoint per saved step holds the whole train state (step, params, optimizer state, EMA),
restored straight into its shardings; the step is also the data position. Saves are
asynchronous; orbax writes each into a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous checkpoints as they were. The last `keep` are kept.

A checkpoint damaged later (a truncated or deleted file, unreadable metadata) does not stop a
resume: `restore_latest` moves it aside (to `<step>.unreadable`, never deleting it) and restores
the one before. A checkpoint written for another model is an error, not damage. The directory
may be local or gs://BUCKET/PATH: orbax writes the arrays there through tensorstore.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from core import errors, storage
from core.errors import UserError


class CheckpointError(UserError, ValueError):
  """No checkpoint can be restored, or one belongs to another model."""


class Checkpointer:
  """Save / resume of the train state in `directory`."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = storage.absolute(directory)
    self._options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
      self.directory,
      options=self._options,
      item_names=("state",),
      item_handlers={"state": ocp.StandardCheckpointHandler()},
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state) -> None:
    """Starts an asynchronous save of `state` (a pytree of jax.Arrays). A bucket that refuses
    the writes (permission, credentials) is a StorageError of one line; the checkpoints saved
    before are left as they were (orbax writes into a temporary directory first)."""
    with storage.refusals(f"saving checkpoint {step} to {self.directory}"):
      self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True
      )

  def restore(self, abstract_state, step: int | None = None):
    """The state of `step` (default: the latest), placed as abstract_state's shardings say."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    restored = self._manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )
    return restored["state"]

  def restore_latest(self, abstract_state, say=logging.warning):
    """The state of the newest checkpoint that can be restored, placed as abstract_state's
    shardings say; None when there is no checkpoint at all.

    One that cannot be read is said in one line, moved aside to `<step>.unreadable` and the one
    before is tried; when none can be read, CheckpointError lists them. One whose tensors do not
    match `abstract_state` (another model) raises CheckpointError at once, moving nothing."""
    failed = []
    for step in sorted(self.all_steps(), reverse=True):
      stored, error = None, None
      try:
        with errors.quiet_aftermath():
          stored = self._manager.item_metadata(step)["state"]
      except Exception as e:  # noqa: BLE001 (orbax and tensorstore raise many kinds)
        error = e
      if not _everywhere(error is None):  # every process sets aside the same checkpoints
        failed.append(self._set_aside(step, error or _ELSEWHERE, say))
        continue
      _check_matches(stored, abstract_state, os.path.join(self.directory, str(step)))
      state, error = None, None
      try:
        with errors.quiet_aftermath():
          state = self.restore(abstract_state, step)
      except Exception as e:  # noqa: BLE001
        error = e
      if _everywhere(error is None):
        return state
      failed.append(self._set_aside(step, error or _ELSEWHERE, say))
    if failed:
      raise CheckpointError(
        f"No checkpoint in {self.directory} can be restored: "
        + "; ".join(failed)
        + ". Each was moved aside, not deleted."
      )
    return None

  def _set_aside(self, step: int, error: Exception, say) -> str:
    """Moves an unreadable checkpoint out of the way (process 0) and says so; returns why."""
    reason = errors.one_line(error)
    source = os.path.join(self.directory, str(step))
    target = source + ".unreadable"
    n = 1
    while storage.exists(target):
      n += 1
      target = f"{source}.unreadable{n}"
    _sync(f"looked for a place for checkpoint {step}")  # before process 0 makes it exist
    if jax.process_index() == 0:
      storage.rename(source, target)
    _sync(f"set aside checkpoint {step}")
    self._manager.close()
    self._manager = self._open()
    say(
      f"Checkpoint {step} cannot be restored ({reason}); moved to {target}, trying the one before."
    )
    return f"{step} ({reason})"

  def wait(self) -> None:
    with storage.refusals(f"saving a checkpoint to {self.directory}"):
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and closes; closing again does nothing."""
    if self._manager is not None:
      manager, self._manager = self._manager, None
      with storage.refusals(f"saving a checkpoint to {self.directory}"):
        manager.wait_until_finished()
        manager.close()


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _check_matches(stored, abstract_state, where: str) -> None:
  """CheckpointError when the stored tensors' names or shapes are not those of the model."""

  def name(path):  # orbax's metadata has dicts where the state has optax's named tuples
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)

  have = {
    name(p): tuple(getattr(leaf, "shape", ()))
    for p, leaf in jax.tree_util.tree_leaves_with_path(dict(stored))
  }
  want = {
    name(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_leaves_with_path(abstract_state)
  }
  if have == want:
    return
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want))
  shapes = [
    f"{k} {have[k]} (model {want[k]})" for k in sorted(set(have) & set(want)) if have[k] != want[k]
  ]
  parts = [f"{len(shapes)} of other shapes, e.g. " + ", ".join(shapes[:3])] if shapes else []
  parts += [f"{len(missing)} missing, e.g. {', '.join(missing[:3])}"] if missing else []
  parts += [f"{len(extra)} not in the model, e.g. {', '.join(extra[:3])}"] if extra else []
  raise CheckpointError(
    f"The checkpoint {where} was written by another model: " + "; ".join(parts) + "."
  )


_ELSEWHERE = CheckpointError("another process could not read it")


def _everywhere(ok: bool) -> bool:
  """Whether every process succeeded, so that all of them take the same resume decision (a
  checkpoint one process can read and another cannot is set aside by all)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils

  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))
