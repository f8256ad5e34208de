"""This project's params <-> the official ConvNeXt V2 state dict names and layouts.

Every source format is renamed to the official names first (`models/formats.py`); official names
map one to one onto our param paths (blocks stacked per stage):

    to_params(state_dict, variant=None) -> (params, info)      any format -> ours
    from_params(params, variant, fmt='hf') -> state_dict       ours -> 'hf' or 'official'
    fcmae_decoder_params(state_dict) -> FCMAE decoder params or None   official *_fcmae.pt
    infer_variant(canonical), check_tree(expected, got, what)

The input channel count is read from the stem conv (3 for the published weights).

A model without a head (num_classes=0) here returns the pooled features *before* any LayerNorm;
a source's final norm without a head (HF ConvNextV2Model's pooler norm, timm's head.norm after
reset_classifier(0)) is therefore skipped and reported, and `from_params` writes an identity final
norm for ConvNextV2Model (whose pooler_output is layernorm(mean); its last_hidden_state matches
ours).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from models import convnextv2 as cv
from models.formats import (
  FORMATS,
  HF_PREFIX,
  ConversionError,
  detect_format,
  rename,
  strip_common_prefix,
  to_official,
)

_MAX_LISTED = 20

# ----------------------------------------------------------------------------------------------
# Official names <-> our param paths.

# kind: how a PyTorch-layout tensor becomes ours. conv: OIHW -> HWIO (the depthwise (C,1,7,7)
# becomes (7,7,1,C) by the same transpose); linear: (out, in) -> (in, out); vector: flattened.


def _slots(
  variant: str, num_classes: int, in_chans: int = 3
) -> dict[str, tuple[tuple[str, ...], int | None, str, tuple]]:
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

  conv("downsample_layers.0.0", ("stem", "conv"), in_chans, dims[0], cv.STEM_PATCH)
  norm("downsample_layers.0.1", ("stem", "norm"), dims[0])
  for i, (dim, depth) in enumerate(zip(dims, depths)):
    if i > 0:
      norm(f"downsample_layers.{i}.0", (f"downsample{i}", "norm"), dims[i - 1])
      conv(f"downsample_layers.{i}.1", (f"downsample{i}", "conv"), dims[i - 1], dim, 2)
    slots.update(_block_slots(f"stages.{i}", (f"stage{i}", "blocks"), dim, depth))
  if num_classes > 0:
    norm("norm", ("norm",), dims[-1])
    add("head.weight", ("head", "kernel"), "linear", (num_classes, dims[-1]))
    add("head.bias", ("head", "bias"), "vector", (num_classes,))
  return slots


def _block_slots(prefix: str, base: tuple[str, ...], dim: int, depth: int) -> dict:
  """The slots of a stage's `depth` blocks: official `{prefix}.{j}.dwconv.weight`, ... -> our
  `base/dwconv/kernel`, ... stacked over j."""
  slots = {}
  for j in range(depth):
    b = f"{prefix}.{j}"
    for name, path, kind, shape in (
      ("dwconv.weight", ("dwconv", "kernel"), "conv", (dim, 1, 7, 7)),
      ("dwconv.bias", ("dwconv", "bias"), "vector", (dim,)),
      ("norm.weight", ("norm", "scale"), "vector", (dim,)),
      ("norm.bias", ("norm", "bias"), "vector", (dim,)),
      ("pwconv1.weight", ("pwconv1", "kernel"), "linear", (4 * dim, dim)),
      ("pwconv1.bias", ("pwconv1", "bias"), "vector", (4 * dim,)),
      ("grn.gamma", ("grn", "gamma"), "vector", (1, 1, 1, 4 * dim)),
      ("grn.beta", ("grn", "beta"), "vector", (1, 1, 1, 4 * dim)),
      ("pwconv2.weight", ("pwconv2", "kernel"), "linear", (dim, 4 * dim)),
      ("pwconv2.bias", ("pwconv2", "bias"), "vector", (dim,)),
    ):
      slots[f"{b}.{name}"] = (base + path, j, kind, shape)
  return slots


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


def _mismatch_message(
  what: str, missing: list[str], unexpected: list[str], wrong: list[tuple[str, Any, Any]]
) -> str:
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
    lines.append(
      f"  wrong shape ({len(wrong)}): "
      + listed(f"{k} expected {tuple(e)} got {tuple(g)}" for k, e, g in wrong)
    )
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
  for name, axis in (
    ("downsample_layers.0.0.weight", 0),
    ("downsample_layers.0.0.bias", 0),
    ("downsample_layers.0.1.weight", 0),
    ("stages.0.0.dwconv.bias", -1),
  ):
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
    raise ConversionError(
      f"Unknown ConvNeXt V2 variant {variant!r}; valid: {', '.join(cv.VARIANTS)}."
    )
  inferred, depths, c0 = infer_variant(canonical)
  if inferred is not None:
    if variant is not None and variant != inferred:
      want = cv.VARIANTS[variant]
      raise ConversionError(
        f"--variant {variant} ({_variant_label(want['depths'], want['dims'])}) disagrees with the "
        f"checkpoint, which is {inferred} (stem width {c0}, depths {depths})."
      )
    return inferred
  if variant is not None:
    want = cv.VARIANTS[variant]
    if c0 is not None and c0 != want["dims"][0]:
      raise ConversionError(
        f"--variant {variant} ({_variant_label(want['depths'], want['dims'])}) disagrees with the "
        f"checkpoint's stem width {c0} (depths counted: {depths})."
      )
    return variant  # the key check below lists what is missing or extra
  # No exact match: a unique stem width still names the variant; the key check reports the rest.
  same_width = [n for n, s in cv.VARIANTS.items() if s["dims"][0] == c0]
  if len(same_width) == 1:
    return same_width[0]
  known = ", ".join(
    f"{n} (C0 {s['dims'][0]}, depths {s['depths']})" for n, s in cv.VARIANTS.items()
  )
  raise ConversionError(
    f"Cannot infer the variant: stem width {c0}, depths {depths} match none of {known}."
  )


# ----------------------------------------------------------------------------------------------
# Conversion in memory.


def to_params(
  state_dict: Mapping[str, Any], variant: str | None = None, *, fmt: str | None = None
) -> tuple[dict, dict]:
  """A state dict in any supported format -> (params, info).

  params: the nested dict of `models.convnextv2.build(variant, num_classes)`, numpy float32,
  blocks stacked per stage. info: format, variant, num_classes, depths, dims, skipped
  [(key, reason)], num_tensors. Raises ConversionError listing every missing, unexpected or
  wrongly shaped key (by its name in the source), or when `variant` disagrees with the shapes.
  """
  fmt = fmt or detect_format(state_dict.keys())
  if fmt not in FORMATS:
    raise ConversionError(f"Unknown format {fmt!r}; expected one of {FORMATS}.")
  canonical, source_of, unmatched, skipped = to_official(state_dict, fmt)
  variant = _resolve_variant(canonical, variant)
  head = canonical.get("head.weight", canonical.get("head.bias"))
  num_classes = int(np.shape(head)[0]) if head is not None else 0
  if num_classes == 0:
    for name in ("norm.weight", "norm.bias"):
      if name in canonical:
        skipped.append(
          (
            source_of.pop(name),
            "final LayerNorm without a head (num_classes=0 "
            "models return pooled features before any norm)",
          )
        )
        del canonical[name]

  stem = canonical.get("downsample_layers.0.0.weight")
  in_chans = int(np.shape(stem)[1]) if stem is not None and np.ndim(stem) == 4 else 3
  slots = _slots(variant, num_classes, in_chans)
  hf_prefixed = fmt == "hf" and any(k.startswith(HF_PREFIX) for k in state_dict)

  def to_source(name):  # how a missing key would be named in the source
    renamed = rename(name, fmt, to_official=False) or name
    return HF_PREFIX + renamed if hf_prefixed and not renamed.startswith("classifier.") else renamed

  missing = [to_source(n) for n in slots if n not in canonical]
  unexpected = [source_of[n] for n in canonical if n not in slots] + unmatched
  wrong = [
    (source_of[n], slots[n][3], np.shape(v))
    for n, v in canonical.items()
    if n in slots and not _compatible(np.shape(v), slots[n][3])
  ]
  if missing or unexpected or wrong:
    spec = cv.VARIANTS[variant]
    raise ConversionError(
      _mismatch_message(
        f"{fmt} checkpoint does not match ConvNeXt V2 {variant} "
        f"({_variant_label(spec['depths'], spec['dims'])}, num_classes {num_classes})",
        missing,
        unexpected,
        wrong,
      )
    )

  params = _fill(slots, canonical)
  check_tree(
    cv.abstract_params(variant, num_classes, in_chans=in_chans),
    params,
    f"converted params ({variant})",
  )
  spec = cv.VARIANTS[variant]
  info = dict(
    format=fmt,
    variant=variant,
    num_classes=num_classes,
    depths=list(spec["depths"]),
    dims=list(spec["dims"]),
    num_tensors=len(slots),
    skipped=skipped,
    in_chans=in_chans,
  )
  return params, info


def _fill(slots: dict, canonical: Mapping[str, Any]) -> dict:
  """Our nested params from official-named tensors, blocks stacked."""
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
  return params


def fcmae_decoder_params(state_dict: Mapping[str, Any]) -> dict | None:
  """The FCMAE decoder of an official FCMAE checkpoint (`*_fcmae.pt`: proj, mask_token,
  decoder.{j}, pred) as fcmae/model.py's params {"proj", "mask_token", "decoder", "pred"};
  None when the state dict has no decoder (an encoder-only file). Raises ConversionError on a
  decoder of another layout."""
  names = list(state_dict)
  keys = dict(zip(strip_common_prefix(names, "module."), names))
  if "mask_token" not in keys or "pred.weight" not in keys:
    return None
  token = np.asarray(state_dict[keys["mask_token"]], np.float32)
  dim = token.size
  depth = len({m[1] for k in keys if (m := re.match(r"decoder\.(\d+)\.", k))})
  pred = np.shape(state_dict[keys["pred.weight"]])
  slots = {
    "proj.weight": (("proj", "kernel"), None, "linear", None),
    "proj.bias": (("proj", "bias"), None, "vector", (dim,)),
    "pred.weight": (("pred", "kernel"), None, "linear", (pred[0], dim)),
    "pred.bias": (("pred", "bias"), None, "vector", (pred[0],)),
    **_block_slots("decoder", ("decoder", "blocks"), dim, depth),
  }
  proj = np.shape(state_dict[keys["proj.weight"]]) if "proj.weight" in keys else (dim, 0)
  slots["proj.weight"] = slots["proj.weight"][:3] + ((dim, int(np.prod(proj[1:]))),)
  missing = [n for n in slots if n not in keys]
  wrong = [
    (n, slots[n][3], np.shape(state_dict[keys[n]]))
    for n in slots
    if n in keys and not _compatible(np.shape(state_dict[keys[n]]), slots[n][3])
  ]
  if missing or wrong:
    raise ConversionError(
      _mismatch_message(
        "The FCMAE decoder of the checkpoint has another layout", missing, [], wrong
      )
    )
  params = _fill(slots, {n: state_dict[keys[n]] for n in slots})
  params["mask_token"] = token.reshape(-1)
  return params


def from_params(params: Mapping, variant: str, fmt: str = "hf") -> dict[str, np.ndarray]:
  """Our params -> a PyTorch-layout state dict: 'hf' (transformers ConvNextV2, with the
  `convnextv2.` prefix when there is a head) or 'official' names. float32, contiguous.

  With no head and fmt 'hf', an identity final LayerNorm is added (ConvNextV2Model has one).
  """
  if fmt not in ("hf", "official"):
    raise ConversionError(f"Export format {fmt!r} is not supported; use 'hf' or 'official'.")
  num_classes = int(np.shape(params["head"]["kernel"])[-1]) if "head" in params else 0
  in_chans = int(np.shape(params["stem"]["conv"]["kernel"])[2])
  expected = cv.abstract_params(variant, num_classes, in_chans=in_chans)
  check_tree(expected, params, f"params for {variant}")
  out = {}
  for name, (path, block, kind, shape) in _slots(variant, num_classes, in_chans).items():
    value = np.asarray(_get(params, path), dtype=np.float32)
    if block is not None:
      value = value[block]
    out[name] = _from_ours(kind, value, shape)
  if fmt == "official":
    return out
  hf = {}
  for name, value in out.items():
    renamed = rename(name, "hf", to_official=False)
    hf[
      renamed if renamed.startswith("classifier.") or num_classes == 0 else HF_PREFIX + renamed
    ] = value
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


def check_tree(expected: Mapping, got: Mapping, what: str) -> None:
  """Raises ConversionError listing paths missing, unexpected or of the wrong shape."""
  shape = lambda v: tuple(v.shape) if hasattr(v, "shape") else np.shape(v)  # arrays, orbax metadata
  exp, have = _flatten(expected), _flatten(got)
  missing = [k for k in exp if k not in have]
  unexpected = [k for k in have if k not in exp]
  wrong = [
    (k, shape(exp[k]), shape(have[k])) for k in exp if k in have and shape(have[k]) != shape(exp[k])
  ]
  if missing or unexpected or wrong:
    raise ConversionError(
      _mismatch_message(f"{what} do not match the model", missing, unexpected, wrong)
    )
