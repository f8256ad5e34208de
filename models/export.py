"""Export to Hugging Face transformers: model.safetensors + config.json for
ConvNextV2ForImageClassification (num_classes > 0) or ConvNextV2Model (num_classes 0).

    export_hf(params, variant, num_classes, out_dir, *, labels=None, force=False)
    export(src, out, *, variant=None, force=False, key=None) -> info    any readable source
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from models import convnextv2 as cv
from models import hub
from models.checkpoint_files import hf_labels, read_hf_config, read_state_dict
from models.converted import (
  CHECKPOINT_FORMAT,
  atomic_directory,
  check_output,
  is_converted_checkpoint,
  load_params,
)
from models.formats import ConversionError
from models.state_dict import from_params, to_params


def hf_config(
  variant: str, num_classes: int, labels: list[str] | None = None, in_chans: int = 3
) -> dict:
  """config.json for transformers' ConvNextV2 (no network needed to load it). The final
  LayerNorm eps is set to ours (1e-6, official) rather than HF's default 1e-12."""
  spec = cv.variant_spec(variant)
  if labels is not None and len(labels) != num_classes:
    raise ConversionError(f"{len(labels)} labels for {num_classes} classes.")
  names = labels or [f"LABEL_{i}" for i in range(num_classes)]
  return dict(
    architectures=["ConvNextV2ForImageClassification" if num_classes else "ConvNextV2Model"],
    model_type="convnextv2",
    num_channels=in_chans,
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
  in_chans = int(np.shape(params["stem"]["conv"]["kernel"])[2])
  config = hf_config(variant, num_classes, labels, in_chans)
  with atomic_directory(out_dir, force) as tmp:
    save_file(state_dict, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
  return Path(out_dir)


def export(
  src: str | os.PathLike,
  out: str | os.PathLike,
  *,
  variant: str | None = None,
  force: bool = False,
  key: str | None = None,
) -> dict:
  """Exports src (a converted checkpoint, any file `read_state_dict` reads, or hf:REPO) to a
  Hugging Face directory at out. Returns the info dict."""
  out = Path(out)
  check_output(out.absolute(), force)
  src = hub.fetch(src).path if hub.is_hub(src) else Path(src)
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
    hf = read_hf_config(src)
    info["labels"] = hf_labels(hf, info["num_classes"]) if hf else None
  export_hf(params, info["variant"], info["num_classes"], out, labels=info["labels"], force=force)
  return info
