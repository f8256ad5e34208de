"""Convert ConvNeXt V2 checkpoints to this project's format, and export them to Hugging Face.

Reads the three published layouts (REFERENCE.md section 4) and writes an orbax checkpoint of the
plain nested params dict of `models.convnextv2.build` (blocks stacked per stage), with the model
config beside it:

    OUT/params/        orbax (StandardCheckpointer) checkpoint of the params dict
    OUT/config.json    {"format": "convnextv2-jax", "variant", "num_classes", "depths", "dims",
                        "source_format", "source_path", "skipped", ...}

Command line:

    python -m models.convert SRC OUT [--variant V] [--key K] [--force]
        Convert SRC into OUT. The variant is inferred from the shapes (stem width and the number
        of blocks per stage); --variant checks it (a disagreement is an error naming both).
        num_classes comes from the head (0 when there is none: an FCMAE encoder).
    python -m models.convert --export CKPT HF_DIR [--variant V] [--key K] [--force]
        Write HF_DIR/model.safetensors + config.json for transformers'
        ConvNextV2ForImageClassification (num_classes > 0) or ConvNextV2Model (num_classes 0).
        CKPT is a converted OUT directory or any SRC this module reads.

OUT and HF_DIR must be absent or empty unless --force; they are written to a temporary sibling
directory and renamed into place, so a failed run never leaves a half-written or damaged output.

Supported SRC (the format is detected from key names):
  official   facebookresearch/ConvNeXt-V2 `.pt` files: `{'model': state_dict}` or a bare state dict.
             `*_ema.pt` (IN-1K / 22K->1K, with head) and `*_fcmae.pt` (encoder only ->
             num_classes=0). FCMAE decoder keys (`decoder.*`, `proj.*`, `pred.*`, `mask_token`) are
             skipped and reported.
  fcmae-sparse  the FCMAE pretraining model's own state dict (MinkowskiEngine encoder): `encoder.`
             prefix, `*.kernel` sparse conv weights, `.ln.` / `.linear.` infixes, GRN (1, 4C);
             remapped as the official `remap_checkpoint_keys` does before finetuning.
  hf         Hugging Face transformers ConvNextV2: a `save_pretrained` directory (config.json +
             model.safetensors, sharded safetensors or pytorch_model.bin), or one `.safetensors`
             / `.bin` file; with (`ConvNextV2ForImageClassification`) or without (`ConvNextV2Model`)
             the `convnextv2.` prefix.
  timm       timm `convnextv2_*` state dicts (`stem.0`, `stages.N.blocks.M.conv_dw`, `mlp.fc1` as
             Linear or 1x1 conv, 1-D `mlp.grn.*`, `head.norm`, `head.fc`).
`.pt/.pth/.bin/.ckpt` files are read with `torch.load(weights_only=True)` (no arbitrary pickled
code runs); `.safetensors` with `safetensors.numpy` (torch is not imported).

Python API (for the training and finetuning code):
    read_state_dict(path, key=None) -> {name: np.ndarray}
    detect_format(keys) -> 'official' | 'fcmae-sparse' | 'hf' | 'timm'
    to_params(state_dict, variant=None, *, fmt=None) -> (params, info)
    from_params(params, variant, fmt='hf') -> {name: np.ndarray}   (PyTorch layouts)
    save(params, out_dir, variant, num_classes, *, force=False, **meta)
    load_params(out_dir) -> (params as numpy, config)
    load(out_dir, **options) -> (apply_fn, params)
    convert(src, out, *, variant=None, force=False, key=None) -> info
    export_hf(params, variant, num_classes, out_dir, *, labels=None, force=False)

A model without a head (num_classes=0) here returns the pooled features *before* any LayerNorm;
a source's final norm without a head (HF ConvNextV2Model's pooler norm, timm's head.norm after
reset_classifier(0)) is therefore skipped and reported, and export writes an identity final norm
for ConvNextV2Model (whose pooler_output is layernorm(mean); its last_hidden_state matches ours).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from flax import traverse_util

from models import convnextv2 as cv

__all__ = [
    "ConversionError", "OutputExistsError", "FORMATS", "read_state_dict", "detect_format",
    "to_params", "from_params", "official_shapes", "infer_variant", "hf_config", "save",
    "load_params", "load", "convert", "export_hf", "is_converted_checkpoint", "main",
]

CHECKPOINT_FORMAT = "convnextv2-jax"   # config.json "format" of a converted checkpoint
CHECKPOINT_FORMAT_VERSION = 1
FORMATS = ("official", "fcmae-sparse", "hf", "timm")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Keys of the FCMAE pretraining model outside the encoder (REFERENCE.md section 2): dropped.
FCMAE_EXTRA_PREFIXES = ("decoder", "proj", "pred", "mask_token")
# Where a training checkpoint keeps its state dict; the first present is used unless --key says.
CONTAINER_KEYS = ("model", "state_dict", "model_ema", "module")
_MAX_LISTED = 20


class ConversionError(ValueError):
  """A checkpoint that cannot be converted: unknown format, wrong keys or shapes, bad variant."""


class OutputExistsError(ConversionError, FileExistsError):
  """The output directory exists and is not empty (and --force was not given)."""


# ----------------------------------------------------------------------------------------------
# Reading.


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
    what = f" (it references {found[1]})" if found else ""
    raise ConversionError(
        f"{path}: refused to unpickle: the file holds objects other than tensors and plain "
        f"containers{what}, and it is read with torch.load(weights_only=True) so that no code in "
        f"it runs. If you trust the file, re-save just its state dict "
        f"(torch.save(model.state_dict(), ...)) and convert that.") from None


def _unwrap_container(obj: Any, path: Path, key: str | None) -> dict:
  """The state dict inside a training checkpoint ({'model': sd, 'epoch': ...}) or obj itself."""
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{path}: expected a dict (state dict or checkpoint), got {type(obj).__name__}.")
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
    raise ConversionError(f"{path}: no tensors found; top-level entries: {list(obj)[:_MAX_LISTED]}. "
                          f"Pass --key to name the entry holding the state dict.")
  return out


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  """safetensors.numpy, or for dtypes numpy lacks (bfloat16) the file's own simple layout:
  8-byte little-endian header size, JSON header {name: dtype, shape, data_offsets}, raw data."""
  from safetensors.numpy import load_file
  try:
    tensors = load_file(str(path))
  except TypeError:  # "data type 'bfloat16' not understood"
    tensors = _read_safetensors_raw(path)
  is_float = lambda dtype: np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"
  return {k: (v.astype(np.float32) if is_float(v.dtype) else v) for k, v in tensors.items()}


def _read_safetensors_raw(path: Path) -> dict[str, np.ndarray]:
  import ml_dtypes  # a jax dependency
  dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
            "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
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


def is_converted_checkpoint(path: str | os.PathLike) -> bool:
  """True for a directory written by `save` (config.json with format convnextv2-jax)."""
  config = Path(path) / "config.json"
  if not config.is_file():
    return False
  try:
    return json.loads(config.read_text()).get("format") == CHECKPOINT_FORMAT
  except (ValueError, OSError):
    return False


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
      raise ConversionError(f"{path} is already a converted checkpoint; use models.convert.load().")
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
    raise ConversionError(f"{path}: a directory without model.safetensors, model.safetensors.index.json "
                          f"or pytorch_model.bin; it holds {sorted(p.name for p in path.iterdir())[:_MAX_LISTED]}.")
  if path.suffix == ".safetensors":
    return _read_safetensors(path)
  if path.suffix in TORCH_SUFFIXES:
    return _tensors_only(_unwrap_container(_torch_load(path), path, key), path)
  raise ConversionError(f"{path}: unsupported file type {path.suffix!r}; expected a directory, "
                        f".safetensors or one of {', '.join(TORCH_SUFFIXES)}.")


def _read_hf_config(path: Path) -> dict | None:
  """config.json of a Hugging Face directory, if SRC is one."""
  config = path / "config.json"
  if path.is_dir() and config.is_file():
    return json.loads(config.read_text())
  return None


# ----------------------------------------------------------------------------------------------
# Key names. Every format is renamed to the official names (the canonical form here); official
# names then map one to one onto this project's param paths (`_slots`).

_FIELDS = {"i": r"\d+", "j": r"\d+", "d": r"[1-3]", "k": r"[01]", "p": r"weight|bias"}

# (official template, other template); the first rule that matches wins.
_RULES: dict[str, list[tuple[str, str]]] = {
    "hf": [  # names after the `convnextv2.` prefix is removed; the classifier never has it.
        ("downsample_layers.0.0.{p}", "embeddings.patch_embeddings.{p}"),
        ("downsample_layers.0.1.{p}", "embeddings.layernorm.{p}"),
        ("downsample_layers.{d}.{k}.{p}", "encoder.stages.{d}.downsampling_layer.{k}.{p}"),
        ("stages.{i}.{j}.dwconv.{p}", "encoder.stages.{i}.layers.{j}.dwconv.{p}"),
        ("stages.{i}.{j}.norm.{p}", "encoder.stages.{i}.layers.{j}.layernorm.{p}"),
        ("stages.{i}.{j}.pwconv1.{p}", "encoder.stages.{i}.layers.{j}.pwconv1.{p}"),
        ("stages.{i}.{j}.pwconv2.{p}", "encoder.stages.{i}.layers.{j}.pwconv2.{p}"),
        ("stages.{i}.{j}.grn.gamma", "encoder.stages.{i}.layers.{j}.grn.weight"),
        ("stages.{i}.{j}.grn.beta", "encoder.stages.{i}.layers.{j}.grn.bias"),
        ("norm.{p}", "layernorm.{p}"),
        ("head.{p}", "classifier.{p}"),
    ],
    "timm": [
        ("downsample_layers.0.0.{p}", "stem.0.{p}"),
        ("downsample_layers.0.1.{p}", "stem.1.{p}"),
        ("downsample_layers.{d}.{k}.{p}", "stages.{d}.downsample.{k}.{p}"),
        ("stages.{i}.{j}.dwconv.{p}", "stages.{i}.blocks.{j}.conv_dw.{p}"),
        ("stages.{i}.{j}.norm.{p}", "stages.{i}.blocks.{j}.norm.{p}"),
        ("stages.{i}.{j}.pwconv1.{p}", "stages.{i}.blocks.{j}.mlp.fc1.{p}"),
        ("stages.{i}.{j}.pwconv2.{p}", "stages.{i}.blocks.{j}.mlp.fc2.{p}"),
        ("stages.{i}.{j}.grn.gamma", "stages.{i}.blocks.{j}.mlp.grn.weight"),
        ("stages.{i}.{j}.grn.beta", "stages.{i}.blocks.{j}.mlp.grn.bias"),
        ("norm.{p}", "head.norm.{p}"),
        ("head.{p}", "head.fc.{p}"),
    ],
}
HF_PREFIX = "convnextv2."

_MARKERS = {  # key patterns that identify each format, most distinctive first
    "hf": re.compile(r"^(convnextv2\.)?(embeddings\.(patch_embeddings|layernorm)\."
                     r"|encoder\.stages\.\d+\.(layers|downsampling_layer)\.)"),
    "fcmae-sparse": re.compile(r"^encoder\.(downsample_layers|stages)\.|\.kernel$|\.(ln|linear)\.(weight|bias)$"),
    "timm": re.compile(r"^(stem\.[01]\.|stages\.\d+\.(blocks|downsample)\.|head\.(fc|norm)\.)"),
    "official": re.compile(r"^(downsample_layers\.\d+\.\d+|stages\.\d+\.\d+)\."),
}


def _compile(template: str) -> re.Pattern:
  parts = re.split(r"\{([a-z])\}", template)
  regex = "".join(re.escape(p) if n % 2 == 0 else f"(?P<{p}>{_FIELDS[p]})" for n, p in enumerate(parts))
  return re.compile(f"^{regex}$")


_COMPILED = {fmt: [(_compile(a), a, _compile(b), b) for a, b in rules] for fmt, rules in _RULES.items()}


def _rename(name: str, fmt: str, *, to_official: bool) -> str | None:
  """Official name <-> the name in `fmt`; None when no rule matches."""
  if fmt not in _COMPILED:  # official and fcmae-sparse use the official names
    return name
  for off_re, off_t, other_re, other_t in _COMPILED[fmt]:
    match = (other_re if to_official else off_re).match(name)
    if match:
      return (off_t if to_official else other_t).format(**match.groupdict())
  return None


def detect_format(keys: Iterable[str]) -> str:
  """'hf', 'fcmae-sparse', 'timm' or 'official', from the key names alone."""
  keys = list(keys)
  stripped = _strip_common_prefix(keys, "module.")
  for fmt, marker in _MARKERS.items():
    if any(marker.search(k) for k in stripped):
      return fmt
  sample = ", ".join(sorted(keys)[:8]) or "(no keys)"
  raise ConversionError(
      f"Unrecognised checkpoint format: {len(keys)} keys, e.g. {sample}. Expected ConvNeXt V2 keys "
      f"in the official (downsample_layers.0.0.weight, stages.0.0.dwconv.weight), Hugging Face "
      f"(convnextv2.embeddings.patch_embeddings.weight, ...layers.0.dwconv.weight) or timm "
      f"(stem.0.weight, stages.0.blocks.0.conv_dw.weight) layout.")


def _strip_common_prefix(keys: list[str], prefix: str) -> list[str]:
  if keys and all(k.startswith(prefix) for k in keys):
    return [k[len(prefix):] for k in keys]
  return keys


def _sparse_kernel(value: np.ndarray, name: str) -> np.ndarray:
  """MinkowskiEngine kernel -> PyTorch layout, as the official remap_checkpoint_keys does.

  (kv, in, out) -> (out, in, k, k) and (kv, C) -> (C, 1, k, k), where row w * k + h of the
  sparse kernel holds position (h, w).
  """
  k = math.isqrt(value.shape[0])
  if k * k != value.shape[0] or value.ndim not in (2, 3):
    raise ConversionError(f"{name}: sparse kernel of shape {value.shape} is neither (k*k, in, out) nor (k*k, C).")
  if value.ndim == 3:
    return value.reshape(k, k, *value.shape[1:]).transpose(3, 2, 1, 0)
  return value.reshape(k, k, value.shape[1]).transpose(2, 1, 0)[:, None]


def _to_official(state_dict: Mapping[str, np.ndarray], fmt: str):
  """Renames to official names. Returns (canonical, source_name_of, unmatched, skipped)."""
  canonical: dict[str, np.ndarray] = {}
  source_of: dict[str, str] = {}
  unmatched: list[str] = []
  skipped: list[tuple[str, str]] = []
  original = list(state_dict)
  for source, key in zip(original, _strip_common_prefix(original, "module.")):
    value = np.asarray(state_dict[source])
    name = key
    if fmt in ("official", "fcmae-sparse"):
      if name.startswith("encoder."):
        name = name[len("encoder."):]
      if name.split(".")[0] in FCMAE_EXTRA_PREFIXES:
        skipped.append((source, "FCMAE decoder / mask token (not part of the encoder)"))
        continue
      parts = name.split(".")
      if len(parts) > 2 and parts[-2] in ("ln", "linear"):  # MinkowskiLayerNorm / MinkowskiLinear
        name = ".".join(parts[:-2] + parts[-1:])
      if name.endswith(".kernel"):
        name = name[:-len("kernel")] + "weight"
        value = _sparse_kernel(value, source)
    elif fmt == "hf":
      if name.startswith(HF_PREFIX):
        name = name[len(HF_PREFIX):]
      if name.startswith("hidden_states_norms."):
        skipped.append((source, "ConvNextV2Backbone output norm"))
        continue
      name = _rename(name, fmt, to_official=True)
    else:
      name = _rename(name, fmt, to_official=True)
    if name is None:
      unmatched.append(source)
      continue
    if name in canonical:
      raise ConversionError(f"Keys {source_of[name]!r} and {source!r} both map to {name!r}.")
    canonical[name] = value
    source_of[name] = source
  return canonical, source_of, unmatched, skipped


# ----------------------------------------------------------------------------------------------
# Official names <-> our param paths.

# kind: how a PyTorch-layout tensor becomes ours. conv: OIHW -> HWIO (the depthwise (C,1,7,7)
# becomes (7,7,1,C) by the same transpose); linear: (out, in) -> (in, out); vector: flattened.


def _slots(variant: str, num_classes: int) -> dict[str, tuple[tuple[str, ...], int | None, str, tuple]]:
  """{official name: (our param path, block index or None, kind, official shape)}."""
  spec = cv.variant_spec(variant)
  depths, dims = spec["depths"], spec["dims"]
  slots: dict[str, tuple] = {}

  def add(name, path, kind, shape, block=None):
    slots[name] = (tuple(path), block, kind, tuple(shape))

  def conv(prefix, path, din, dout, k):
    add(f"{prefix}.weight", path + ("kernel",), "conv", (dout, din, k, k))
    add(f"{prefix}.bias", path + ("bias",), "vector", (dout,))

  def norm(prefix, path, dim, block=None):
    add(f"{prefix}.weight", path + ("scale",), "vector", (dim,), block)
    add(f"{prefix}.bias", path + ("bias",), "vector", (dim,), block)

  conv("downsample_layers.0.0", ("stem", "conv"), 3, dims[0], cv.STEM_PATCH)
  norm("downsample_layers.0.1", ("stem", "norm"), dims[0])
  for i, (dim, depth) in enumerate(zip(dims, depths)):
    if i > 0:
      norm(f"downsample_layers.{i}.0", (f"downsample{i}", "norm"), dims[i - 1])
      conv(f"downsample_layers.{i}.1", (f"downsample{i}", "conv"), dims[i - 1], dim, 2)
    base = (f"stage{i}", "blocks")
    for j in range(depth):
      b = f"stages.{i}.{j}"
      add(f"{b}.dwconv.weight", base + ("dwconv", "kernel"), "conv", (dim, 1, 7, 7), j)
      add(f"{b}.dwconv.bias", base + ("dwconv", "bias"), "vector", (dim,), j)
      norm(f"{b}.norm", base + ("norm",), dim, j)
      add(f"{b}.pwconv1.weight", base + ("pwconv1", "kernel"), "linear", (4 * dim, dim), j)
      add(f"{b}.pwconv1.bias", base + ("pwconv1", "bias"), "vector", (4 * dim,), j)
      add(f"{b}.grn.gamma", base + ("grn", "gamma"), "vector", (1, 1, 1, 4 * dim), j)
      add(f"{b}.grn.beta", base + ("grn", "beta"), "vector", (1, 1, 1, 4 * dim), j)
      add(f"{b}.pwconv2.weight", base + ("pwconv2", "kernel"), "linear", (dim, 4 * dim), j)
      add(f"{b}.pwconv2.bias", base + ("pwconv2", "bias"), "vector", (dim,), j)
  if num_classes > 0:
    norm("norm", ("norm",), dims[-1])
    add("head.weight", ("head", "kernel"), "linear", (num_classes, dims[-1]))
    add("head.bias", ("head", "bias"), "vector", (num_classes,))
  return slots


def official_shapes(variant: str, num_classes: int) -> dict[str, tuple[int, ...]]:
  """The official state dict's {name: shape} for a variant (REFERENCE.md section 4)."""
  return {name: slot[3] for name, slot in _slots(variant, num_classes).items()}


def _squeezed(shape) -> tuple[int, ...]:
  return tuple(d for d in shape if d != 1)


def _compatible(got, expected) -> bool:
  """Equal up to singleton axes: GRN (1,1,1,4C) / (1,4C) / (4C,), 1x1-conv Linears, (1,C) biases."""
  return tuple(got) == tuple(expected) or _squeezed(got) == _squeezed(expected)


def _to_ours(kind: str, value: np.ndarray, shape: tuple) -> np.ndarray:
  value = value.reshape(shape)
  if kind == "conv":
    return value.transpose(2, 3, 1, 0)
  if kind == "linear":
    return value.T
  return value.reshape(-1)


def _from_ours(kind: str, value: np.ndarray, shape: tuple) -> np.ndarray:
  if kind == "conv":
    value = value.transpose(3, 2, 0, 1)
  elif kind == "linear":
    value = value.T
  return np.ascontiguousarray(value.reshape(shape))


def _mismatch_message(what: str, missing: list[str], unexpected: list[str],
                      wrong: list[tuple[str, Any, Any]]) -> str:
  def listed(items):
    items = list(items)
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more
  lines = [f"{what}:"]
  if missing:
    lines.append(f"  missing ({len(missing)}): {listed(missing)}")
  if unexpected:
    lines.append(f"  unexpected ({len(unexpected)}): {listed(unexpected)}")
  if wrong:
    lines.append(f"  wrong shape ({len(wrong)}): " +
                 listed(f"{k} expected {tuple(e)} got {tuple(g)}" for k, e, g in wrong))
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Variant inference.


def _variant_label(depths, dims) -> str:
  return f"depths {tuple(depths)}, dims {tuple(dims)}"


def infer_variant(canonical: Mapping[str, Any]) -> tuple[str | None, tuple[int, ...], int | None]:
  """(variant or None, depths counted, stem width C0 or None) from official-named tensors.

  C0 is the stem conv's out channels (else the stem norm's or the first block's width); depths
  count the block indices of each stage. The variant is the one with that C0 and those depths.
  """
  c0 = None
  for name, axis in (("downsample_layers.0.0.weight", 0), ("downsample_layers.0.0.bias", 0),
                     ("downsample_layers.0.1.weight", 0), ("stages.0.0.dwconv.bias", -1)):
    if name in canonical and np.ndim(canonical[name]) > 0:
      c0 = int(np.shape(canonical[name])[axis])
      break
  depths = []
  for i in range(4):
    blocks = [int(m.group(1)) for k in canonical if (m := re.match(rf"stages\.{i}\.(\d+)\.", k))]
    depths.append(max(blocks) + 1 if blocks else 0)
  depths = tuple(depths)
  for name, spec in cv.VARIANTS.items():
    if spec["dims"][0] == c0 and tuple(spec["depths"]) == depths:
      return name, depths, c0
  return None, depths, c0


def _resolve_variant(canonical: Mapping[str, Any], variant: str | None) -> str:
  if variant is not None and variant not in cv.VARIANTS:
    raise ConversionError(f"Unknown ConvNeXt V2 variant {variant!r}; valid: {', '.join(cv.VARIANTS)}.")
  inferred, depths, c0 = infer_variant(canonical)
  if inferred is not None:
    if variant is not None and variant != inferred:
      want = cv.VARIANTS[variant]
      raise ConversionError(
          f"--variant {variant} ({_variant_label(want['depths'], want['dims'])}) disagrees with the "
          f"checkpoint, which is {inferred} (stem width {c0}, depths {depths}).")
    return inferred
  if variant is not None:
    want = cv.VARIANTS[variant]
    if c0 is not None and c0 != want["dims"][0]:
      raise ConversionError(
          f"--variant {variant} ({_variant_label(want['depths'], want['dims'])}) disagrees with the "
          f"checkpoint's stem width {c0} (depths counted: {depths}).")
    return variant  # the key check below lists what is missing or extra
  # No exact match: a unique stem width still names the variant; the key check reports the rest.
  same_width = [n for n, s in cv.VARIANTS.items() if s["dims"][0] == c0]
  if len(same_width) == 1:
    return same_width[0]
  known = ", ".join(f"{n} (C0 {s['dims'][0]}, depths {s['depths']})" for n, s in cv.VARIANTS.items())
  raise ConversionError(f"Cannot infer the variant: stem width {c0}, depths {depths} match none of {known}.")


# ----------------------------------------------------------------------------------------------
# Conversion in memory.


def to_params(state_dict: Mapping[str, Any], variant: str | None = None, *,
              fmt: str | None = None) -> tuple[dict, dict]:
  """A state dict in any supported format -> (params, info).

  params: the nested dict of `models.convnextv2.build(variant, num_classes)`, numpy float32,
  blocks stacked per stage. info: format, variant, num_classes, depths, dims, skipped
  [(key, reason)], num_tensors. Raises ConversionError listing every missing, unexpected or
  wrongly shaped key (by its name in the source), or when `variant` disagrees with the shapes.
  """
  fmt = fmt or detect_format(state_dict.keys())
  if fmt not in FORMATS:
    raise ConversionError(f"Unknown format {fmt!r}; expected one of {FORMATS}.")
  canonical, source_of, unmatched, skipped = _to_official(state_dict, fmt)
  variant = _resolve_variant(canonical, variant)
  head = canonical.get("head.weight", canonical.get("head.bias"))
  num_classes = int(np.shape(head)[0]) if head is not None else 0
  if num_classes == 0:
    for name in ("norm.weight", "norm.bias"):
      if name in canonical:
        skipped.append((source_of.pop(name), "final LayerNorm without a head (num_classes=0 "
                                             "models return pooled features before any norm)"))
        del canonical[name]

  slots = _slots(variant, num_classes)
  hf_prefixed = fmt == "hf" and any(k.startswith(HF_PREFIX) for k in state_dict)

  def to_source(name):  # how a missing key would be named in the source
    renamed = _rename(name, fmt, to_official=False) or name
    return HF_PREFIX + renamed if hf_prefixed and not renamed.startswith("classifier.") else renamed

  missing = [to_source(n) for n in slots if n not in canonical]
  unexpected = [source_of[n] for n in canonical if n not in slots] + unmatched
  wrong = [(source_of[n], slots[n][3], np.shape(v)) for n, v in canonical.items()
           if n in slots and not _compatible(np.shape(v), slots[n][3])]
  if missing or unexpected or wrong:
    spec = cv.VARIANTS[variant]
    raise ConversionError(_mismatch_message(
        f"{fmt} checkpoint does not match ConvNeXt V2 {variant} "
        f"({_variant_label(spec['depths'], spec['dims'])}, num_classes {num_classes})",
        missing, unexpected, wrong))

  params: dict = {}
  blocks: dict[tuple, dict[int, np.ndarray]] = {}
  for name, (path, block, kind, shape) in slots.items():
    value = _to_ours(kind, np.asarray(canonical[name], dtype=np.float32), shape)
    if block is None:
      _set(params, path, value)
    else:
      blocks.setdefault(path, {})[block] = value
  for path, per_block in blocks.items():
    _set(params, path, np.stack([per_block[j] for j in range(len(per_block))]))
  _check_tree(cv.abstract_params(variant, num_classes), params, f"converted params ({variant})")
  spec = cv.VARIANTS[variant]
  info = dict(format=fmt, variant=variant, num_classes=num_classes, depths=list(spec["depths"]),
              dims=list(spec["dims"]), num_tensors=len(slots), skipped=skipped)
  return params, info


def from_params(params: Mapping, variant: str, fmt: str = "hf") -> dict[str, np.ndarray]:
  """Our params -> a PyTorch-layout state dict: 'hf' (transformers ConvNextV2, with the
  `convnextv2.` prefix when there is a head) or 'official' names. float32, contiguous.

  With no head and fmt 'hf', an identity final LayerNorm is added (ConvNextV2Model has one).
  """
  if fmt not in ("hf", "official"):
    raise ConversionError(f"Export format {fmt!r} is not supported; use 'hf' or 'official'.")
  num_classes = int(np.shape(params["head"]["kernel"])[-1]) if "head" in params else 0
  _check_tree(cv.abstract_params(variant, num_classes), params, f"params for {variant}")
  out = {}
  for name, (path, block, kind, shape) in _slots(variant, num_classes).items():
    value = np.asarray(_get(params, path), dtype=np.float32)
    if block is not None:
      value = value[block]
    out[name] = _from_ours(kind, value, shape)
  if fmt == "official":
    return out
  hf = {}
  for name, value in out.items():
    renamed = _rename(name, "hf", to_official=False)
    hf[renamed if renamed.startswith("classifier.") or num_classes == 0 else HF_PREFIX + renamed] = value
  if num_classes == 0:
    c3 = cv.VARIANTS[variant]["dims"][-1]
    hf["layernorm.weight"] = np.ones((c3,), np.float32)
    hf["layernorm.bias"] = np.zeros((c3,), np.float32)
  return hf


# ----------------------------------------------------------------------------------------------
# Nested-dict helpers.


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for part in path[:-1]:
    tree = tree.setdefault(part, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]):
  for part in path:
    tree = tree[part]
  return tree


def _flatten(tree: Mapping) -> dict[str, Any]:
  """{'a/b/c': leaf} of a nested dict."""
  return traverse_util.flatten_dict(tree, sep="/")


def _check_tree(expected: Mapping, got: Mapping, what: str) -> None:
  """Raises ConversionError listing paths missing, unexpected or of the wrong shape."""
  shape = lambda v: tuple(v.shape) if hasattr(v, "shape") else np.shape(v)  # arrays, orbax metadata
  exp, have = _flatten(expected), _flatten(got)
  missing = [k for k in exp if k not in have]
  unexpected = [k for k in have if k not in exp]
  wrong = [(k, shape(exp[k]), shape(have[k])) for k in exp if k in have and shape(have[k]) != shape(exp[k])]
  if missing or unexpected or wrong:
    raise ConversionError(_mismatch_message(f"{what} do not match the model", missing, unexpected, wrong))


# ----------------------------------------------------------------------------------------------
# Writing and reading our checkpoints.


def _check_output(out: Path, force: bool) -> None:
  if out.exists():
    if not out.is_dir():
      raise OutputExistsError(f"{out} exists and is not a directory.")
    if any(out.iterdir()) and not force:
      raise OutputExistsError(f"{out} exists and is not empty; pass --force (force=True) to replace it.")


@contextlib.contextmanager
def _atomic_directory(out: str | os.PathLike, force: bool):
  """Yields a fresh temporary sibling of `out`; on success it replaces `out`, on failure it is
  deleted and `out` is left as it was."""
  out = Path(out).absolute()
  _check_output(out, force)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
  try:
    yield tmp
    _check_output(out, force)
    if out.exists():
      old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
      out.rename(old)
      try:
        tmp.rename(out)
      except BaseException:
        old.rename(out)
        raise
      shutil.rmtree(old, ignore_errors=True)
    else:
      tmp.rename(out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _jsonable(value):
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.integer, np.floating)):
    return value.item()
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return str(value)


def save(params: Mapping, out_dir: str | os.PathLike, variant: str, num_classes: int, *,
         force: bool = False, **meta) -> Path:
  """Writes params (checked against the model's shapes) to out_dir/params with orbax and
  out_dir/config.json (variant, num_classes, depths, dims and `meta`). Atomic; returns out_dir."""
  import orbax.checkpoint as ocp
  if variant not in cv.VARIANTS:
    raise ConversionError(f"Unknown ConvNeXt V2 variant {variant!r}; valid: {', '.join(cv.VARIANTS)}.")
  _check_tree(cv.abstract_params(variant, num_classes), params, f"params for {variant}/{num_classes} classes")
  arrays = _nested_numpy(params)
  spec = cv.VARIANTS[variant]
  config = dict(format=CHECKPOINT_FORMAT, format_version=CHECKPOINT_FORMAT_VERSION, model="convnextv2",
                variant=variant, num_classes=int(num_classes), depths=list(spec["depths"]),
                dims=list(spec["dims"]), params_layout="blocks stacked per stage", **meta)
  with _atomic_directory(out_dir, force) as tmp:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(tmp / "params", arrays)
      checkpointer.wait_until_finished()
    (tmp / "config.json").write_text(json.dumps(_jsonable(config), indent=2) + "\n")
  return Path(out_dir)


def _nested_numpy(tree: Mapping) -> dict:
  return {k: _nested_numpy(v) if isinstance(v, Mapping) else np.asarray(v, dtype=np.float32)
          for k, v in tree.items()}


def _read_config(ckpt_dir: Path) -> dict:
  path = ckpt_dir / "config.json"
  if not path.is_file():
    raise ConversionError(f"{ckpt_dir}: no config.json; not a converted checkpoint.")
  config = json.loads(path.read_text())
  if config.get("format") != CHECKPOINT_FORMAT:
    raise ConversionError(f"{path}: format {config.get('format')!r} is not {CHECKPOINT_FORMAT!r}.")
  if config.get("variant") not in cv.VARIANTS:
    raise ConversionError(f"{path}: unknown variant {config.get('variant')!r}; valid: {', '.join(cv.VARIANTS)}.")
  return config


def load_params(ckpt_dir: str | os.PathLike) -> tuple[dict, dict]:
  """(params as numpy float32, config) of a converted checkpoint; shapes checked (from the
  checkpoint's metadata, before anything is read) against the model config.json names."""
  import orbax.checkpoint as ocp
  ckpt_dir = Path(ckpt_dir).absolute()
  config = _read_config(ckpt_dir)
  expected = cv.abstract_params(config["variant"], config["num_classes"])
  with ocp.StandardCheckpointer() as checkpointer:
    stored = checkpointer.metadata(ckpt_dir / "params").item_metadata.tree
    _check_tree(expected, stored, f"{ckpt_dir}/params")
    params = checkpointer.restore(ckpt_dir / "params")
  return _nested_numpy(params), config


def load(ckpt_dir: str | os.PathLike, **options) -> tuple[Callable, dict]:
  """(apply_fn, params) of a converted checkpoint: the model of `models.convnextv2.build(variant,
  num_classes, **options)` (options: dtype, depthwise_impl, scan, remat, drop_path_rate, output,
  ...), and its params as jax arrays on the default device, every shape checked against it."""
  import jax
  params, config = load_params(ckpt_dir)
  apply_fn, abstract = cv.build(config["variant"], config["num_classes"], abstract=True, **options)
  _check_tree(abstract, params, f"{ckpt_dir}/params")
  return apply_fn, jax.device_put(params)


# ----------------------------------------------------------------------------------------------
# Conversion and export end to end.


def convert(src: str | os.PathLike, out: str | os.PathLike, *, variant: str | None = None,
            force: bool = False, key: str | None = None) -> dict:
  """Reads src (any supported format), converts and saves it to out. Returns the info dict."""
  src, out = Path(src), Path(out)
  _check_output(out.absolute(), force)  # fail before reading a large file
  params, info = to_params(read_state_dict(src, key=key), variant)
  meta = dict(source_format=info["format"], source_path=str(src.absolute()),
              skipped=[list(s) for s in info["skipped"]])
  hf = _read_hf_config(src)
  if hf is not None:
    _check_hf_config(hf, info, src)
    labels = _labels(hf, info["num_classes"])
    if labels:
      meta["labels"] = labels
    if "layer_norm_eps" in hf:
      meta["source_head_norm_eps"] = hf["layer_norm_eps"]
  save(params, out, info["variant"], info["num_classes"], force=force, **meta)
  return info


def _check_hf_config(hf: dict, info: dict, src: Path) -> None:
  got = dict(hidden_sizes=list(hf.get("hidden_sizes", info["dims"])), depths=list(hf.get("depths", info["depths"])))
  want = dict(hidden_sizes=info["dims"], depths=info["depths"])
  if got != want:
    raise ConversionError(f"{src}/config.json says {got} but the weights are {info['variant']} {want}.")


def _labels(hf: dict, num_classes: int) -> list[str] | None:
  """Class names from a Hugging Face config, unless they are the generic LABEL_i."""
  id2label = hf.get("id2label") or {}
  names = [id2label.get(str(i), id2label.get(i)) for i in range(num_classes)]
  if num_classes == 0 or any(n is None for n in names) or names == [f"LABEL_{i}" for i in range(num_classes)]:
    return None
  return names


def hf_config(variant: str, num_classes: int, labels: list[str] | None = None) -> dict:
  """config.json for transformers' ConvNextV2 (no network needed to load it). The final
  LayerNorm eps is set to ours (1e-6, official) rather than HF's default 1e-12."""
  spec = cv.variant_spec(variant)
  if labels is not None and len(labels) != num_classes:
    raise ConversionError(f"{len(labels)} labels for {num_classes} classes.")
  names = labels or [f"LABEL_{i}" for i in range(num_classes)]
  return dict(
      architectures=["ConvNextV2ForImageClassification" if num_classes else "ConvNextV2Model"],
      model_type="convnextv2", num_channels=3, patch_size=cv.STEM_PATCH, num_stages=4,
      hidden_sizes=list(spec["dims"]), depths=list(spec["depths"]), hidden_act="gelu",
      initializer_range=0.02, layer_norm_eps=1e-6, drop_path_rate=0.0, image_size=224,
      num_labels=num_classes, id2label={str(i): n for i, n in enumerate(names)},
      label2id={n: i for i, n in enumerate(names)}, torch_dtype="float32")


def export_hf(params: Mapping, variant: str, num_classes: int, out_dir: str | os.PathLike, *,
              labels: list[str] | None = None, force: bool = False) -> Path:
  """Writes out_dir/model.safetensors + config.json, loadable offline with
  `ConvNextV2ForImageClassification.from_pretrained(out_dir)` (num_classes > 0) or
  `ConvNextV2Model.from_pretrained(out_dir)` (num_classes 0). Atomic; returns out_dir."""
  from safetensors.numpy import save_file
  have = int(np.shape(params["head"]["kernel"])[-1]) if "head" in params else 0
  if have != num_classes:
    raise ConversionError(f"num_classes={num_classes} but the params have a {have}-class head.")
  state_dict = from_params(params, variant, "hf")
  config = hf_config(variant, num_classes, labels)
  with _atomic_directory(out_dir, force) as tmp:
    save_file(state_dict, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
  return Path(out_dir)


# ----------------------------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m models.convert",
      description="Convert ConvNeXt V2 checkpoints (official .pt, FCMAE, Hugging Face, timm) to this "
                  "project's orbax format, or export one to a Hugging Face directory.",
      epilog="Examples:\n"
             "  python -m models.convert convnextv2_atto_1k_224_ema.pt ckpt/atto\n"
             "  python -m models.convert convnextv2_base_1k_224_fcmae.pt ckpt/base_fcmae --variant base\n"
             "  python -m models.convert path/to/hf_dir ckpt/tiny\n"
             "  python -m models.convert --export ckpt/atto hf/atto\n"
             "Load with models.convert.load(OUT, **build_options) -> (apply_fn, params).",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("src", metavar="SRC", help="checkpoint to read: file or Hugging Face directory "
                      "(with --export: also a converted OUT directory)")
  parser.add_argument("out", metavar="OUT", help="output directory (with --export: the Hugging Face directory)")
  parser.add_argument("--export", action="store_true",
                      help="export SRC to OUT as transformers ConvNextV2 (model.safetensors + config.json)")
  parser.add_argument("--variant", choices=list(cv.VARIANTS), default=None,
                      help="expected variant; inferred from the shapes when omitted, an error when it disagrees")
  parser.add_argument("--key", default=None,
                      help="entry of a torch checkpoint holding the state dict (default: model, state_dict, "
                           "model_ema, module, else the top level)")
  parser.add_argument("--force", action="store_true", help="replace a non-empty output directory")
  return parser


def _export(src: Path, out: Path, variant: str | None, force: bool, key: str | None) -> dict:
  _check_output(out.absolute(), force)
  if is_converted_checkpoint(src):
    params, config = load_params(src)
    if variant is not None and variant != config["variant"]:
      raise ConversionError(f"--variant {variant} disagrees with {src}, which is {config['variant']}.")
    info = dict(format=CHECKPOINT_FORMAT, variant=config["variant"], num_classes=config["num_classes"],
                skipped=[], labels=config.get("labels"))
  else:
    params, info = to_params(read_state_dict(src, key=key), variant)
    hf = _read_hf_config(src)
    info["labels"] = _labels(hf, info["num_classes"]) if hf else None
  export_hf(params, info["variant"], info["num_classes"], out, labels=info["labels"], force=force)
  return info


def main(argv: list[str] | None = None) -> int:
  """CLI entry point; returns the exit status (1 on a conversion error, printed to stderr)."""
  args = _parser().parse_args(argv)
  src, out = Path(args.src), Path(args.out)
  try:
    if args.export:
      info = _export(src, out, args.variant, args.force, args.key)
    else:
      info = convert(src, out, variant=args.variant, force=args.force, key=args.key)
  except ConversionError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  what = "Hugging Face ConvNextV2" + ("ForImageClassification" if info["num_classes"] else "Model")
  print(f"{src} ({info['format']}) -> {out}" + (f" ({what})" if args.export else ""))
  print(f"  variant {info['variant']}, num_classes {info['num_classes']}")
  for key, reason in info["skipped"]:
    print(f"  skipped {key}: {reason}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
