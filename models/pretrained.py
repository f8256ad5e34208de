"""Weights from wherever they are kept, as host numpy params: a train.py / finetune.py workdir or
checkpoint, a `models.convert` output directory, or an official / Hugging Face / timm PyTorch
checkpoint, local or by name on the Hugging Face Hub (hf:REPO[@REVISION], models/hub.py).
Finetuning's init_from, the probe and the reconstruction pictures read them here.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from core import storage
from core.errors import UserError
from models import checkpoint_files, converted, hub, state_dict


class WeightsError(UserError, ValueError):
  """A weights source names nothing readable."""


def read_params(path: str) -> dict:
  """Params (host numpy) of any supported source: a run's workdir/checkpoint (ours), a converted
  checkpoint, a PyTorch checkpoint file/directory (local or gs://), or hf:REPO[@REVISION]
  (models/hub.py; with several processes every process must call it: they agree on one commit)."""
  if hub.is_hub(path):  # the hub's cached snapshot of that commit, downloaded once per cache
    path = str(hub.fetch(path, agree=True).path)
  if not storage.exists(path):
    raise WeightsError(f"{path!r} does not exist.")
  if storage.is_remote(path) and not _is_train_checkpoint(path):
    with storage.downloaded(path) as local:  # the converters read local files
      return read_params(local)
  if converted.is_converted_checkpoint(path):
    params, _ = converted.load_params(path)
  elif _is_train_checkpoint(path):
    params = restore_train_params(path)
  else:
    params, _ = state_dict.to_params(checkpoint_files.read_state_dict(path))
  return params


def _is_train_checkpoint(path: str) -> bool:
  return any(storage.isdir(os.path.join(path, sub)) for sub in ("checkpoints", "state")) or (
    storage.isdir(path) and any(name.isdigit() for name in storage.listdir(path))
  )


def restore_train_params(path: str) -> dict:
  """The params of a train checkpoint, as host numpy arrays: `path` is a workdir, its
  checkpoints/ directory, or one step's directory (the latest step is taken). Used to initialise
  finetuning and by the reconstruction pictures; works whatever mesh wrote the checkpoint."""
  path = storage.absolute(path).rstrip("/")
  if storage.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  if not storage.isdir(os.path.join(path, "state")):
    steps = ocp.utils.checkpoint_steps(path) if storage.isdir(path) else []
    if not steps:
      raise WeightsError(f"No train checkpoint (a workdir or checkpoints/<step>) at {path}.")
    path = os.path.join(path, str(max(steps)))
  checkpointer = ocp.PyTreeCheckpointer()
  state_dir = os.path.join(path, "state")
  metadata = checkpointer.metadata(state_dir)
  tree = getattr(metadata, "item_metadata", None) or getattr(metadata, "tree", None) or metadata
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), dict(tree))
  state = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return state["params"]
