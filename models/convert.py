"""Convert ConvNeXt V2 checkpoints to this project's format, and export them to Hugging Face.

Reads the published checkpoints (docs/reference.md, section 4; key mapping in
`models/state_dict.py`) and writes an orbax checkpoint of the plain nested params dict of
`models.convnextv2.build` (blocks stacked per stage), with the model config beside it:

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

SRC: an official `.pt` file (`{'model': state_dict}` or a bare state dict; `*_ema.pt` with a head,
`*_fcmae.pt` encoder only -> num_classes=0, FCMAE decoder keys skipped and reported), a Hugging
Face `save_pretrained` directory (model.safetensors, sharded safetensors or pytorch_model.bin) or
one `.safetensors` / `.bin` file, or a timm state dict; the format is detected from key names.
SRC may also be `hf:REPO[@REVISION]`, read through the Hugging Face cache (models/hub.py); the
repository, revision and resolved commit go into OUT/config.json (hub_repo, hub_revision,
hub_commit).
`.pt/.pth/.bin/.ckpt` files are read with `torch.load(weights_only=True)` (no arbitrary pickled
code runs); `.safetensors` with `safetensors.numpy` (torch is not imported).

Python API (for the training and finetuning code):
    read_state_dict(path, key=None) -> {name: np.ndarray}
    save(params, out_dir, variant, num_classes, *, force=False, **meta)
    load_params(out_dir) -> (params as numpy, config)
    load(out_dir, **options) -> (apply_fn, params)
    convert(src, out, *, variant=None, force=False, key=None) -> info
    export_hf(params, variant, num_classes, out_dir, *, labels=None, force=False)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core import errors, storage
from models import convnextv2 as cv
from models import hub
from models.state_dict import ConversionError, check_tree, from_params, to_params

_MAX_LISTED = 20

CHECKPOINT_FORMAT = "convnextv2-jax"  # config.json "format" of a converted checkpoint
CHECKPOINT_FORMAT_VERSION = 1
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Where a training checkpoint keeps its state dict; the first present is used unless --key says.
CONTAINER_KEYS = ("model", "state_dict", "model_ema", "module")


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


def _read_hf_config(path: Path) -> dict | None:
  """config.json of a Hugging Face directory, if SRC is one."""
  config = path / "config.json"
  if path.is_dir() and config.is_file():
    return json.loads(config.read_text())
  return None


# ----------------------------------------------------------------------------------------------
# Writing and reading our checkpoints.


def _check_output(out: Path, force: bool) -> None:
  if out.exists():
    if not out.is_dir():
      raise OutputExistsError(f"{out} exists and is not a directory.")
    if any(out.iterdir()) and not force:
      raise OutputExistsError(
        f"{out} exists and is not empty; pass --force (force=True) to replace it."
      )


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


def save(
  params: Mapping,
  out_dir: str | os.PathLike,
  variant: str,
  num_classes: int,
  *,
  force: bool = False,
  **meta,
) -> Path:
  """Writes params (checked against the model's shapes) to out_dir/params with orbax and
  out_dir/config.json (variant, num_classes, depths, dims and `meta`). Atomic; returns out_dir."""
  import orbax.checkpoint as ocp

  if variant not in cv.VARIANTS:
    raise ConversionError(
      f"Unknown ConvNeXt V2 variant {variant!r}; valid: {', '.join(cv.VARIANTS)}."
    )
  check_tree(
    cv.abstract_params(variant, num_classes), params, f"params for {variant}/{num_classes} classes"
  )
  arrays = _nested_numpy(params)
  spec = cv.VARIANTS[variant]
  config = dict(
    format=CHECKPOINT_FORMAT,
    format_version=CHECKPOINT_FORMAT_VERSION,
    model="convnextv2",
    variant=variant,
    num_classes=int(num_classes),
    depths=list(spec["depths"]),
    dims=list(spec["dims"]),
    params_layout="blocks stacked per stage",
    **meta,
  )
  with _atomic_directory(out_dir, force) as tmp:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(tmp / "params", arrays)
      checkpointer.wait_until_finished()
    (tmp / "config.json").write_text(json.dumps(_jsonable(config), indent=2) + "\n")
  return Path(out_dir)


def _nested_numpy(tree: Mapping) -> dict:
  return {
    k: _nested_numpy(v) if isinstance(v, Mapping) else np.asarray(v, dtype=np.float32)
    for k, v in tree.items()
  }


def _read_config(ckpt_dir: Path) -> dict:
  path = ckpt_dir / "config.json"
  if not path.is_file():
    raise ConversionError(f"{ckpt_dir}: no config.json; not a converted checkpoint.")
  config = json.loads(path.read_text())
  if config.get("format") != CHECKPOINT_FORMAT:
    raise ConversionError(f"{path}: format {config.get('format')!r} is not {CHECKPOINT_FORMAT!r}.")
  if config.get("variant") not in cv.VARIANTS:
    raise ConversionError(
      f"{path}: unknown variant {config.get('variant')!r}; valid: {', '.join(cv.VARIANTS)}."
    )
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
    check_tree(expected, stored, f"{ckpt_dir}/params")
    params = checkpointer.restore(ckpt_dir / "params")
  return _nested_numpy(params), config


def load(ckpt_dir: str | os.PathLike, **options) -> tuple[Callable, dict]:
  """(apply_fn, params) of a converted checkpoint: the model of `models.convnextv2.build(variant,
  num_classes, **options)` (options: dtype, depthwise_impl, scan, remat, drop_path_rate, output,
  ...), and its params as jax arrays on the default device, every shape checked against it."""
  import jax

  params, config = load_params(ckpt_dir)
  apply_fn, abstract = cv.build(config["variant"], config["num_classes"], abstract=True, **options)
  check_tree(abstract, params, f"{ckpt_dir}/params")
  return apply_fn, jax.device_put(params)


# ----------------------------------------------------------------------------------------------
# Conversion and export end to end.


def convert(
  src: str | os.PathLike,
  out: str | os.PathLike,
  *,
  variant: str | None = None,
  force: bool = False,
  key: str | None = None,
) -> dict:
  """Reads src (any supported format, or hf:REPO[@REVISION]), converts and saves it to out.
  Returns the info dict."""
  _check_output(Path(out).absolute(), force)  # fail before reading (or downloading) a large file
  hub_meta = {}
  if hub.is_hub(src):  # the hub's cached snapshot; its repository and commit go in config.json
    snapshot = hub.fetch(src)
    src, hub_meta = snapshot.path, snapshot.meta()
  src, out = Path(src), Path(out)
  params, info = to_params(read_state_dict(src, key=key), variant)
  meta = dict(
    source_format=info["format"],
    source_path=str(src.absolute()),
    skipped=[list(s) for s in info["skipped"]],
    **hub_meta,
  )
  hf = _read_hf_config(src)
  if hf is not None:
    _check_hf_config(hf, info, src)
    labels = _labels(hf, info["num_classes"])
    if labels:
      meta["labels"] = labels
    if "layer_norm_eps" in hf:
      meta["source_head_norm_eps"] = hf["layer_norm_eps"]
  save(params, out, info["variant"], info["num_classes"], force=force, **meta)
  return {**info, **hub_meta}


def _check_hf_config(hf: dict, info: dict, src: Path) -> None:
  got = dict(
    hidden_sizes=list(hf.get("hidden_sizes", info["dims"])),
    depths=list(hf.get("depths", info["depths"])),
  )
  want = dict(hidden_sizes=info["dims"], depths=info["depths"])
  if got != want:
    raise ConversionError(
      f"{src}/config.json says {got} but the weights are {info['variant']} {want}."
    )


def _labels(hf: dict, num_classes: int) -> list[str] | None:
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


def hf_config(variant: str, num_classes: int, labels: list[str] | None = None) -> dict:
  """config.json for transformers' ConvNextV2 (no network needed to load it). The final
  LayerNorm eps is set to ours (1e-6, official) rather than HF's default 1e-12."""
  spec = cv.variant_spec(variant)
  if labels is not None and len(labels) != num_classes:
    raise ConversionError(f"{len(labels)} labels for {num_classes} classes.")
  names = labels or [f"LABEL_{i}" for i in range(num_classes)]
  return dict(
    architectures=["ConvNextV2ForImageClassification" if num_classes else "ConvNextV2Model"],
    model_type="convnextv2",
    num_channels=3,
    patch_size=cv.STEM_PATCH,
    num_stages=4,
    hidden_sizes=list(spec["dims"]),
    depths=list(spec["depths"]),
    hidden_act="gelu",
    initializer_range=0.02,
    layer_norm_eps=1e-6,
    drop_path_rate=0.0,
    image_size=224,
    num_labels=num_classes,
    id2label={str(i): n for i, n in enumerate(names)},
    label2id={n: i for i, n in enumerate(names)},
    torch_dtype="float32",
  )


def export_hf(
  params: Mapping,
  variant: str,
  num_classes: int,
  out_dir: str | os.PathLike,
  *,
  labels: list[str] | None = None,
  force: bool = False,
) -> Path:
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
    "  python -m models.convert hf:facebook/convnextv2-atto-1k-224 ckpt/atto\n"
    "  python -m models.convert --export ckpt/atto hf/atto\n"
    "Load with models.convert.load(OUT, **build_options) -> (apply_fn, params).",
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "src",
    metavar="SRC",
    help="checkpoint to read: file, Hugging Face directory, or hf:REPO[@REVISION] on the Hub "
    "(with --export: also a converted OUT directory)",
  )
  parser.add_argument(
    "out", metavar="OUT", help="output directory (with --export: the Hugging Face directory)"
  )
  parser.add_argument(
    "--export",
    action="store_true",
    help="export SRC to OUT as transformers ConvNextV2 (model.safetensors + config.json)",
  )
  parser.add_argument(
    "--variant",
    choices=list(cv.VARIANTS),
    default=None,
    help="expected variant; inferred from the shapes when omitted, an error when it disagrees",
  )
  parser.add_argument(
    "--key",
    default=None,
    help="entry of a torch checkpoint holding the state dict (default: model, state_dict, "
    "model_ema, module, else the top level)",
  )
  parser.add_argument("--force", action="store_true", help="replace a non-empty output directory")
  return parser


def _export(src: Path, out: Path, variant: str | None, force: bool, key: str | None) -> dict:
  _check_output(out.absolute(), force)
  if hub.is_hub(src):
    src = hub.fetch(src).path
  if is_converted_checkpoint(src):
    params, config = load_params(src)
    if variant is not None and variant != config["variant"]:
      raise ConversionError(
        f"--variant {variant} disagrees with {src}, which is {config['variant']}."
      )
    info = dict(
      format=CHECKPOINT_FORMAT,
      variant=config["variant"],
      num_classes=config["num_classes"],
      skipped=[],
      labels=config.get("labels"),
    )
  else:
    params, info = to_params(read_state_dict(src, key=key), variant)
    hf = _read_hf_config(src)
    info["labels"] = _labels(hf, info["num_classes"]) if hf else None
  export_hf(params, info["variant"], info["num_classes"], out, labels=info["labels"], force=force)
  return info


def main(argv: list[str] | None = None) -> int:
  """CLI entry point; returns the exit status (2 on a conversion error, printed to stderr)."""
  args = _parser().parse_args(argv)
  storage.setup()
  src, out = args.src, args.out
  try:
    # gs:// SRC is read from a local copy, gs:// OUT written locally and copied up whole.
    with contextlib.ExitStack() as stack:
      if not hub.is_hub(src):
        src = Path(stack.enter_context(storage.downloaded(src)))
      local_out = Path(stack.enter_context(storage.local_directory(out)))
      if args.export:
        info = _export(src, local_out, args.variant, args.force, args.key)
      else:
        info = convert(src, local_out, variant=args.variant, force=args.force, key=args.key)
  except errors.UserError as e:  # ConversionError, hub.HubError
    print(f"error: {e}", file=sys.stderr)
    return 2
  what = "Hugging Face ConvNextV2" + ("ForImageClassification" if info["num_classes"] else "Model")
  print(f"{args.src} ({info['format']}) -> {out}" + (f" ({what})" if args.export else ""))
  print(f"  variant {info['variant']}, num_classes {info['num_classes']}")
  if "hub_commit" in info:
    print(f"  {info['hub_repo']} revision {info['hub_revision']}: commit {info['hub_commit']}")
  for key, reason in info["skipped"]:
    print(f"  skipped {key}: {reason}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
