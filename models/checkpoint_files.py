"""Reading checkpoint files into {name: numpy array}: official / timm PyTorch files, safetensors,
Hugging Face `save_pretrained` directories (and their config.json).

`.pt/.pth/.bin/.ckpt` files are read with `torch.load(weights_only=True)` (no arbitrary pickled
code runs); `.safetensors` with `safetensors.numpy` (torch is not imported).

    read_state_dict(path, key=None) -> {name: np.ndarray}
    read_hf_config(path) -> dict | None, hf_labels(hf_config, num_classes)
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core import errors
from models.converted import is_converted_checkpoint
from models.formats import ConversionError

_MAX_LISTED = 20
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Where a training checkpoint keeps its state dict; the first present is used unless --key says.
CONTAINER_KEYS = ("model", "state_dict", "model_ema", "module")


def _to_numpy(tensor) -> np.ndarray:
  """torch tensor -> numpy; floats (bfloat16 and float16 included) as float32."""
  if tensor.is_floating_point():
    tensor = tensor.float()
  return tensor.detach().cpu().contiguous().numpy()


def _torch_load(path: Path) -> Any:
  """torch.load restricted to tensors and plain containers (weights_only=True)."""
  import pickle

  import torch

  try:  # argparse.Namespace: official training checkpoints carry their command-line args
    with torch.serialization.safe_globals([argparse.Namespace]):
      return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if (
      not found
    ):  # not a pickle of tensors at all, e.g. "WeightsUnpickler error: Unsupported operand"
      detail = re.search(r"WeightsUnpickler error: \s*(.+)", str(e))
      why = " ".join(detail.group(1).split()[:8]) if detail else errors.one_line(e, 200)
      raise ConversionError(
        f"{path}: not a PyTorch checkpoint (unpickling failed: {why})."
      ) from None
    what = f" (it references {found[1]})" if found else ""
    raise ConversionError(
      f"{path}: refused to unpickle: the file holds objects other than tensors and plain "
      f"containers{what}, and it is read with torch.load(weights_only=True) so that no code in "
      f"it runs. If you trust the file, re-save just its state dict "
      f"(torch.save(model.state_dict(), ...)) and convert that."
    ) from None
  except (
    RuntimeError,
    EOFError,
    ValueError,
    OSError,
  ) as e:  # not a zip / pickle at all, or cut short
    raise ConversionError(
      f"{path}: not a PyTorch checkpoint ({errors.one_line(e, 200)})."
    ) from None


def _unwrap_container(obj: Any, path: Path, key: str | None) -> dict:
  """The state dict inside a training checkpoint ({'model': sd, 'epoch': ...}) or obj itself."""
  if not isinstance(obj, Mapping):
    raise ConversionError(
      f"{path}: expected a dict (state dict or checkpoint), got {type(obj).__name__}."
    )
  if key is not None:
    for part in key.split("."):
      if not isinstance(obj, Mapping) or part not in obj:
        have = list(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise ConversionError(f"{path}: no entry {key!r} (at {part!r}); top-level entries: {have}.")
      obj = obj[part]
    return obj
  for name in CONTAINER_KEYS:
    if isinstance(obj.get(name), Mapping) and obj[name]:
      return obj[name]
  return obj


def _tensors_only(obj: Mapping, path: Path) -> dict[str, np.ndarray]:
  import torch

  out = {str(k): _to_numpy(v) for k, v in obj.items() if isinstance(v, torch.Tensor)}
  if not out:
    raise ConversionError(
      f"{path}: no tensors found; top-level entries: {list(obj)[:_MAX_LISTED]}. "
      f"Pass --key to name the entry holding the state dict."
    )
  return out


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  """safetensors.numpy, or for dtypes numpy lacks (bfloat16) the file's own simple layout:
  8-byte little-endian header size, JSON header {name: dtype, shape, data_offsets}, raw data."""
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  try:
    tensors = load_file(str(path))
  except TypeError:  # "data type 'bfloat16' not understood"
    tensors = _read_safetensors_raw(path)
  except (SafetensorError, OSError, ValueError) as e:
    raise ConversionError(
      f"{path}: not a readable safetensors file ({errors.one_line(e, 200)})."
    ) from None
  is_float = lambda dtype: np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"
  return {k: (v.astype(np.float32) if is_float(v.dtype) else v) for k, v in tensors.items()}


def _read_safetensors_raw(path: Path) -> dict[str, np.ndarray]:
  import ml_dtypes  # a jax dependency

  dtypes = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
  }
  with open(path, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(size))
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
  out = {}
  for name, meta in header.items():
    if name == "__metadata__":
      continue
    if meta["dtype"] not in dtypes:
      raise ConversionError(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}.")
    start, end = meta["data_offsets"]
    out[name] = np.frombuffer(data[start:end], dtype=dtypes[meta["dtype"]]).reshape(meta["shape"])
  return out


def read_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
  """Reads a checkpoint file or Hugging Face directory into {name: numpy array} (floats float32).

  key: the (dotted) entry of a torch checkpoint that holds the state dict; by default the first
  of 'model', 'state_dict', 'model_ema', 'module' present, else the file's top-level dict.
  """
  path = Path(path)
  if not path.exists():
    raise ConversionError(f"{path}: no such file or directory.")
  if path.is_dir():
    if is_converted_checkpoint(path):
      raise ConversionError(
        f"{path} is already a converted checkpoint; use models.converted.load()."
      )
    if (path / "model.safetensors").is_file():
      return _read_safetensors(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
      shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
      out: dict[str, np.ndarray] = {}
      for shard in shards:
        out.update(_read_safetensors(path / shard))
      return out
    if (path / "pytorch_model.bin").is_file():
      return read_state_dict(path / "pytorch_model.bin", key)
    raise ConversionError(
      f"{path}: a directory without model.safetensors, model.safetensors.index.json "
      f"or pytorch_model.bin; it holds {sorted(p.name for p in path.iterdir())[:_MAX_LISTED]}."
    )
  if path.suffix == ".safetensors":
    return _read_safetensors(path)
  if path.suffix in TORCH_SUFFIXES:
    return _tensors_only(_unwrap_container(_torch_load(path), path, key), path)
  raise ConversionError(
    f"{path}: unsupported file type {path.suffix!r}; expected a directory, "
    f".safetensors or one of {', '.join(TORCH_SUFFIXES)}."
  )


def read_hf_config(path: Path) -> dict | None:
  """config.json of a Hugging Face directory, if SRC is one."""
  config = path / "config.json"
  if path.is_dir() and config.is_file():
    return json.loads(config.read_text())
  return None


def hf_labels(hf: dict, num_classes: int) -> list[str] | None:
  """Class names from a Hugging Face config, unless they are the generic LABEL_i."""
  id2label = hf.get("id2label") or {}
  names = [id2label.get(str(i), id2label.get(i)) for i in range(num_classes)]
  if (
    num_classes == 0
    or any(n is None for n in names)
    or names == [f"LABEL_{i}" for i in range(num_classes)]
  ):
    return None
  return names
