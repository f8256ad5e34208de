"""The key names of the published ConvNeXt V2 state dicts, renamed to the official names.

Pure mapping, no file I/O. Four source formats (docs/reference.md, section 4), detected from the
key names:

  official      facebookresearch/ConvNeXt-V2 state dicts (`*_ema.pt`, `*_fcmae.pt` encoders).
  fcmae-sparse  the FCMAE pretraining model's own state dict (MinkowskiEngine encoder: `encoder.`
                prefix, `*.kernel` sparse weights, `.ln.` / `.linear.` infixes), remapped as the
                official `remap_checkpoint_keys` does.
  hf            Hugging Face transformers ConvNextV2, with or without the `convnextv2.` prefix.
  timm          timm `convnextv2_*` (`stem.0`, `stages.N.blocks.M.conv_dw`, `mlp.fc1` as Linear or
                1x1 conv, 1-D `mlp.grn.*`, `head.norm`, `head.fc`).

    detect_format(keys) -> fmt
    to_official(state_dict, fmt) -> (canonical, source_of, unmatched, skipped)
    rename(name, fmt, to_official=...)                      one name, official <-> fmt

The official names map one to one onto this project's params in `models/state_dict.py`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import numpy as np

from core.errors import UserError

FORMATS = ("official", "fcmae-sparse", "hf", "timm")
# Keys of the FCMAE pretraining model outside the encoder (docs/reference.md, section 4): dropped.
FCMAE_EXTRA_PREFIXES = ("decoder", "proj", "pred", "mask_token")


class ConversionError(UserError, ValueError):
  """A checkpoint that cannot be converted: unknown format, wrong keys or shapes, bad variant."""


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
  "hf": re.compile(
    r"^(convnextv2\.)?(embeddings\.(patch_embeddings|layernorm)\."
    r"|encoder\.stages\.\d+\.(layers|downsampling_layer)\.)"
  ),
  "fcmae-sparse": re.compile(
    r"^encoder\.(downsample_layers|stages)\.|\.kernel$|\.(ln|linear)\.(weight|bias)$"
  ),
  "timm": re.compile(r"^(stem\.[01]\.|stages\.\d+\.(blocks|downsample)\.|head\.(fc|norm)\.)"),
  "official": re.compile(r"^(downsample_layers\.\d+\.\d+|stages\.\d+\.\d+)\."),
}


def _compile(template: str) -> re.Pattern:
  parts = re.split(r"\{([a-z])\}", template)
  regex = "".join(
    re.escape(p) if n % 2 == 0 else f"(?P<{p}>{_FIELDS[p]})" for n, p in enumerate(parts)
  )
  return re.compile(f"^{regex}$")


_COMPILED = {
  fmt: [(_compile(a), a, _compile(b), b) for a, b in rules] for fmt, rules in _RULES.items()
}


def rename(name: str, fmt: str, *, to_official: bool) -> str | None:
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
  stripped = strip_common_prefix(keys, "module.")
  for fmt, marker in _MARKERS.items():
    if any(marker.search(k) for k in stripped):
      return fmt
  sample = ", ".join(sorted(keys)[:8]) or "(no keys)"
  raise ConversionError(
    f"Unrecognised checkpoint format: {len(keys)} keys, e.g. {sample}. Expected ConvNeXt V2 keys "
    f"in the official (downsample_layers.0.0.weight, stages.0.0.dwconv.weight), Hugging Face "
    f"(convnextv2.embeddings.patch_embeddings.weight, ...layers.0.dwconv.weight) or timm "
    f"(stem.0.weight, stages.0.blocks.0.conv_dw.weight) layout."
  )


def strip_common_prefix(keys: list[str], prefix: str) -> list[str]:
  if keys and all(k.startswith(prefix) for k in keys):
    return [k[len(prefix) :] for k in keys]
  return keys


def _sparse_kernel(value: np.ndarray, name: str) -> np.ndarray:
  """MinkowskiEngine kernel -> PyTorch layout, as the official remap_checkpoint_keys does.

  (kv, in, out) -> (out, in, k, k) and (kv, C) -> (C, 1, k, k), where row w * k + h of the
  sparse kernel holds position (h, w).
  """
  k = math.isqrt(value.shape[0])
  if k * k != value.shape[0] or value.ndim not in (2, 3):
    raise ConversionError(
      f"{name}: sparse kernel of shape {value.shape} is neither (k*k, in, out) nor (k*k, C)."
    )
  if value.ndim == 3:
    return value.reshape(k, k, *value.shape[1:]).transpose(3, 2, 1, 0)
  return value.reshape(k, k, value.shape[1]).transpose(2, 1, 0)[:, None]


def to_official(state_dict: Mapping[str, np.ndarray], fmt: str):
  """Renames to official names. Returns (canonical, source_name_of, unmatched, skipped)."""
  canonical: dict[str, np.ndarray] = {}
  source_of: dict[str, str] = {}
  unmatched: list[str] = []
  skipped: list[tuple[str, str]] = []
  original = list(state_dict)
  for source, key in zip(original, strip_common_prefix(original, "module.")):
    value = np.asarray(state_dict[source])
    name = key
    if fmt in ("official", "fcmae-sparse"):
      if name.startswith("encoder."):
        name = name[len("encoder.") :]
      if name.split(".")[0] in FCMAE_EXTRA_PREFIXES:
        skipped.append((source, "FCMAE decoder / mask token (not part of the encoder)"))
        continue
      parts = name.split(".")
      if len(parts) > 2 and parts[-2] in ("ln", "linear"):  # MinkowskiLayerNorm / MinkowskiLinear
        name = ".".join(parts[:-2] + parts[-1:])
      if name.endswith(".kernel"):
        name = name[: -len("kernel")] + "weight"
        value = _sparse_kernel(value, source)
    elif fmt == "hf":
      if name.startswith(HF_PREFIX):
        name = name[len(HF_PREFIX) :]
      if name.startswith("hidden_states_norms."):
        skipped.append((source, "ConvNextV2Backbone output norm"))
        continue
      name = rename(name, fmt, to_official=True)
    else:
      name = rename(name, fmt, to_official=True)
    if name is None:
      unmatched.append(source)
      continue
    if name in canonical:
      raise ConversionError(f"Keys {source_of[name]!r} and {source!r} both map to {name!r}.")
    canonical[name] = value
    source_of[name] = source
  return canonical, source_of, unmatched, skipped
