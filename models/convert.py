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

Python API: convert(src, out, *, variant=None, force=False, key=None) -> info. The parts live
by job: models/formats.py (key names), models/state_dict.py (ours <-> official),
models/checkpoint_files.py (reading files), models/converted.py (OUT: save, load_params, load),
models/export.py (the Hugging Face export).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from core import errors, storage
from models import convnextv2 as cv
from models import hub
from models.checkpoint_files import hf_labels, read_hf_config, read_state_dict
from models.converted import check_output, save
from models.export import export
from models.formats import ConversionError
from models.state_dict import to_params

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
  check_output(Path(out).absolute(), force)  # fail before reading (or downloading) a large file
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
  hf = read_hf_config(src)
  if hf is not None:
    _check_hf_config(hf, info, src)
    labels = hf_labels(hf, info["num_classes"])
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
    "Load with models.converted.load(OUT, **build_options) -> (apply_fn, params).",
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
        info = export(src, local_out, variant=args.variant, force=args.force, key=args.key)
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
