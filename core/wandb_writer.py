"""Weights & Biases, optional: a run's config, scalars, pictures and cost report in a W&B run.

`--config.log.wandb=PROJECT` (trainer/loop.py opens the run through `open_run`). Only process 0
logs. The run's id is kept in WORKDIR/wandb_run_id (core/storage.py: gs:// too), so a resumed
or preempted run goes on in the same W&B run (`resume="allow"`). Every row is logged with its
training step as the x axis ("step"), so rows of steps done again after a resume are kept.

wandb is not a requirement of the project: `require` says how to install it, in one line, before
anything is built. `WANDB_MODE=offline` writes the run locally (`wandb sync` uploads it later):
into WORKDIR/wandb for a local workdir unless WANDB_DIR says where.
"""

from __future__ import annotations

import math
import os
import secrets

import jax

from core import storage
from core.errors import UserError

INSTALL = 'pip install "wandb>=0.19,<0.32"'
RUN_ID_FILE = "wandb_run_id"

_active: Run | None = None  # the open run, for the pictures (fcmae/visualize.py)


class WandbMissingError(UserError, ImportError):
  """log.wandb names a project but wandb is not installed."""


def require(project: str) -> None:
  """Raises WandbMissingError, with the pip command, when `project` is set and wandb does not
  import."""
  if not project:
    return
  try:
    import wandb  # noqa: F401
  except ImportError:
    raise WandbMissingError(
      f"--config.log.wandb={project!r} needs Weights & Biases, which is not installed: {INSTALL}"
    ) from None


class Run:
  """An open W&B run: scalars and pictures as rows of its history, the cost report as its
  summary."""

  def __init__(self, run):
    self._run, self.id = run, run.id
    run.define_metric("step")
    run.define_metric("*", step_metric="step")

  def scalars(self, step: int, values: dict) -> None:
    row = {k: float(v) for k, v in values.items() if _number(v)}
    if row:
      self._run.log({**row, "step": int(step)})

  def image(self, step: int, tag: str, picture) -> None:
    """`picture`: uint8 (height, width, 3)."""
    import wandb

    self._run.log({tag: wandb.Image(picture), "step": int(step)})

  def summary(self, values: dict) -> None:
    self._run.summary.update({k: v for k, v in values.items() if _number(v)})

  def close(self) -> None:
    global _active
    if self._run is not None:
      self._run.finish()
      self._run = None
    if _active is self:
      _active = None


def open_run(
  workdir: str, project: str, *, entity: str = "", name: str = "", config: dict | None = None
) -> Run | None:
  """The W&B run of `workdir` in `project`: the one WORKDIR/wandb_run_id names, else a new one
  (its id then written there). None when `project` is '' or on processes other than 0."""
  global _active
  if not project or jax.process_index() != 0:
    return None
  require(project)
  import wandb

  id_path = os.path.join(workdir, RUN_ID_FILE)
  run_id = storage.read_text(id_path).strip() if storage.isfile(id_path) else ""
  if not run_id:
    run_id = secrets.token_hex(6)  # W&B ids: letters and digits
    storage.write_text(id_path, run_id + "\n")
  directory = None
  if not os.environ.get("WANDB_DIR") and not storage.is_remote(workdir):
    directory = os.path.abspath(workdir)
  run = wandb.init(
    project=project,
    entity=entity or None,
    name=name or None,
    id=run_id,
    resume="allow",
    config=config,
    dir=directory,
  )
  _active = Run(run)
  return _active


def image(step: int, tag: str, picture) -> None:
  """`picture` in the open run (none open: nothing)."""
  if _active is not None:
    _active.image(step, tag, picture)


def _number(value) -> bool:
  return (
    isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
  )
