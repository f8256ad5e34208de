"""This project's converted checkpoint: the plain nested params dict of `models.convnextv2.build`
(blocks stacked per stage) in orbax, with the model config beside it:

    OUT/params/        orbax (StandardCheckpointer) checkpoint of the params dict
    OUT/config.json    {"format": "convnextv2-jax", "variant", "num_classes", "depths", "dims",
                        "source_format", "source_path", "skipped", ...}

    save(params, out_dir, variant, num_classes, *, force=False, **meta)
    load_params(out_dir) -> (params as numpy, config)
    load(out_dir, **options) -> (apply_fn, params)

Outputs are written to a temporary sibling directory and renamed into place
(`atomic_directory`), so a failed run never leaves a half-written or damaged output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from models import convnextv2 as cv
from models.formats import ConversionError
from models.state_dict import check_tree

CHECKPOINT_FORMAT = "convnextv2-jax"  # config.json "format" of a converted checkpoint
CHECKPOINT_FORMAT_VERSION = 1


class OutputExistsError(ConversionError, FileExistsError):
  """The output directory exists and is not empty (and --force was not given)."""


def is_converted_checkpoint(path: str | os.PathLike) -> bool:
  """True for a directory written by `save` (config.json with format convnextv2-jax)."""
  config = Path(path) / "config.json"
  if not config.is_file():
    return False
  try:
    return json.loads(config.read_text()).get("format") == CHECKPOINT_FORMAT
  except (ValueError, OSError):
    return False


def check_output(out: Path, force: bool) -> None:
  if out.exists():
    if not out.is_dir():
      raise OutputExistsError(f"{out} exists and is not a directory.")
    if any(out.iterdir()) and not force:
      raise OutputExistsError(
        f"{out} exists and is not empty; pass --force (force=True) to replace it."
      )


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, force: bool):
  """Yields a fresh temporary sibling of `out`; on success it replaces `out`, on failure it is
  deleted and `out` is left as it was."""
  out = Path(out).absolute()
  check_output(out, force)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
  try:
    yield tmp
    check_output(out, force)
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
  in_chans = int(np.shape(params["stem"]["conv"]["kernel"])[2])
  check_tree(
    cv.abstract_params(variant, num_classes, in_chans=in_chans),
    params,
    f"params for {variant}/{num_classes} classes",
  )
  arrays = _nested_numpy(params)
  spec = cv.VARIANTS[variant]
  config = dict(
    format=CHECKPOINT_FORMAT,
    format_version=CHECKPOINT_FORMAT_VERSION,
    model="convnextv2",
    variant=variant,
    num_classes=int(num_classes),
    in_chans=in_chans,
    depths=list(spec["depths"]),
    dims=list(spec["dims"]),
    params_layout="blocks stacked per stage",
    **meta,
  )
  with atomic_directory(out_dir, force) as tmp:
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
  expected = cv.abstract_params(
    config["variant"], config["num_classes"], in_chans=config.get("in_chans", 3)
  )
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
  options = {"in_chans": config.get("in_chans", 3), **options}
  apply_fn, abstract = cv.build(config["variant"], config["num_classes"], abstract=True, **options)
  check_tree(abstract, params, f"{ckpt_dir}/params")
  return apply_fn, jax.device_put(params)
