"""Weights from wherever they are kept, as host numpy params: a train.py / finetune.py workdir or
checkpoint, a `models.convert` output directory, or an official / Hugging Face / timm PyTorch
checkpoint, local or by name on the Hugging Face Hub (hf:REPO[@REVISION], models/hub.py).
Finetuning's init_from, the probe and the reconstruction pictures read them here (`read_params`);
pretraining's init_from reads the encoder and, where the source has one, the FCMAE decoder
(`read_fcmae`).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from core import storage
from core.errors import UserError
from models import checkpoint_files, converted, hub
from models import state_dict as state_dict_lib


class WeightsError(UserError, ValueError):
  """A weights source names nothing readable."""


# The FCMAE params beside the encoder (fcmae/model.py): the decoder, the projection into it, the
# mask token and the pixel head.
DECODER_PARTS = ("proj", "mask_token", "decoder", "pred")


@dataclasses.dataclass
class FcmaeWeights:
  """What a source holds for FCMAE pretraining: the encoder (no head) and, when it has one, the
  decoder parts ({"proj", "mask_token", "decoder", "pred"}); `origin` names the source for the
  log (hub sources with their commit)."""

  encoder: dict
  decoder: dict | None
  origin: str


def read_fcmae(path: str) -> FcmaeWeights:
  """The encoder and decoder of any source `read_params` takes: an FCMAE workdir (both), an
  official FCMAE `.pt` (both; its decoder remapped by models/state_dict.py), hf:timm/..fcmae or
  any other ConvNeXt V2 weights (the encoder; a classifier's head and final norm are left out)."""
  origin = path
  if hub.is_hub(path):
    snapshot = hub.fetch(path, agree=True)
    origin = snapshot.pinned
    if snapshot.revision != snapshot.commit:
      origin += f" (revision {snapshot.revision})"
    path = str(snapshot.path)
  if not storage.exists(path):
    raise WeightsError(f"{path!r} does not exist.")
  if storage.is_remote(path) and not _is_train_checkpoint(path):
    with storage.downloaded(path) as local:
      return dataclasses.replace(read_fcmae(local), origin=origin)
  decoder = None
  if converted.is_converted_checkpoint(path):
    params, _ = converted.load_params(path)
  elif _is_train_checkpoint(path):
    params = restore_train_params(path)
    if "encoder" in params:  # an FCMAE run
      parts = {k: params[k] for k in DECODER_PARTS if k in params}
      decoder = parts if len(parts) == len(DECODER_PARTS) else None
      params = params["encoder"]
  else:
    state_dict = checkpoint_files.read_state_dict(path)
    params, _ = state_dict_lib.to_params(state_dict)
    decoder = state_dict_lib.fcmae_decoder_params(state_dict)
  encoder = {k: v for k, v in params.items() if k not in ("head", "norm")}
  return FcmaeWeights(encoder, decoder, origin)


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
    params, _ = state_dict_lib.to_params(checkpoint_files.read_state_dict(path))
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
