"""Independent references for the conversion tests: random transformers ConvNextV2 models and
key maps written out by hand from docs/reference.md, section 4 (not with models/state_dict.py's
own tables)."""

from __future__ import annotations

import re

import numpy as np
import torch
from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

from models import convnextv2 as cv


def hf_model(variant: str, num_labels: int, seed: int = 0):
  """A random transformers ConvNextV2ForImageClassification with non-trivial norms/GRN/biases."""
  spec = cv.VARIANTS[variant]
  torch.manual_seed(seed)
  config = ConvNextV2Config(
    hidden_sizes=list(spec["dims"]), depths=list(spec["depths"]), num_labels=num_labels
  )
  model = ConvNextV2ForImageClassification(config).eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if ".grn." in name:
        p.copy_(0.5 * noise)
      elif p.ndim == 1 and name.endswith("weight"):  # LayerNorm scales
        p.copy_(1.0 + 0.3 * noise)
      elif p.ndim == 1:  # every bias
        p.copy_(0.3 * noise)
  return model


def state_dict_numpy(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def hf_to_official(sd: dict) -> dict:
  """HF names -> official facebookresearch names (docs/reference.md, section 4), same layouts."""
  out = {}
  for key, value in sd.items():
    key = key.removeprefix("convnextv2.")
    if m := re.fullmatch(r"embeddings\.patch_embeddings\.(weight|bias)", key):
      name = f"downsample_layers.0.0.{m[1]}"
    elif m := re.fullmatch(r"embeddings\.layernorm\.(weight|bias)", key):
      name = f"downsample_layers.0.1.{m[1]}"
    elif m := re.fullmatch(r"encoder\.stages\.(\d)\.downsampling_layer\.(\d)\.(weight|bias)", key):
      name = f"downsample_layers.{m[1]}.{m[2]}.{m[3]}"
    elif m := re.fullmatch(r"encoder\.stages\.(\d)\.layers\.(\d+)\.(\w+)\.(weight|bias)", key):
      module = {"layernorm": "norm"}.get(m[3], m[3])
      param = {"weight": "gamma", "bias": "beta"}[m[4]] if module == "grn" else m[4]
      name = f"stages.{m[1]}.{m[2]}.{module}.{param}"
    elif m := re.fullmatch(r"layernorm\.(weight|bias)", key):
      name = f"norm.{m[1]}"
    elif m := re.fullmatch(r"classifier\.(weight|bias)", key):
      name = f"head.{m[1]}"
    else:
      raise AssertionError(f"unmapped HF key {key}")
    out[name] = value
  return out


def official_to_timm(sd: dict) -> dict:
  """Official -> timm convnextv2_* names; atto..nano form: 1x1-conv fc1/fc2, 1-D GRN."""
  out = {}
  for key, value in sd.items():
    if m := re.fullmatch(r"downsample_layers\.0\.(\d)\.(\w+)", key):
      out[f"stem.{m[1]}.{m[2]}"] = value
    elif m := re.fullmatch(r"downsample_layers\.(\d)\.(\d)\.(\w+)", key):
      out[f"stages.{m[1]}.downsample.{m[2]}.{m[3]}"] = value
    elif m := re.fullmatch(r"stages\.(\d)\.(\d+)\.(\w+)\.(\w+)", key):
      block = f"stages.{m[1]}.blocks.{m[2]}"
      module, param = m[3], m[4]
      if module == "dwconv":
        out[f"{block}.conv_dw.{param}"] = value
      elif module == "norm":
        out[f"{block}.norm.{param}"] = value
      elif module in ("pwconv1", "pwconv2"):
        fc = {"pwconv1": "fc1", "pwconv2": "fc2"}[module]
        out[f"{block}.mlp.{fc}.{param}"] = (
          value.reshape(*value.shape, 1, 1) if param == "weight" else value
        )
      elif module == "grn":
        out[f"{block}.mlp.grn.{ {'gamma': 'weight', 'beta': 'bias'}[param] }"] = value.reshape(-1)
    elif m := re.fullmatch(r"norm\.(\w+)", key):
      out[f"head.norm.{m[1]}"] = value
    elif m := re.fullmatch(r"head\.(\w+)", key):
      out[f"head.fc.{m[1]}"] = value
    else:
      raise AssertionError(f"unmapped official key {key}")
  return out


def official_to_sparse_fcmae(sd: dict) -> dict:
  """Dense official encoder -> the FCMAE model's MinkowskiEngine state dict: the inverse of the
  official remap_checkpoint_keys (kernel row w*k+h holds (h, w); .ln/.linear; (1, C) bias/GRN)."""
  out = {}
  for key, value in sd.items():
    parts = key.split(".")
    if key.startswith("downsample_layers.0."):  # the stem is dense in the sparse model
      out["encoder." + key] = value
    elif re.fullmatch(r"downsample_layers\.\d\.0\.\w+", key) or ".norm." in key:
      out["encoder." + ".".join(parts[:-1] + ["ln", parts[-1]])] = value
    elif re.fullmatch(r"downsample_layers\.\d\.1\.weight", key):  # (O, I, 2, 2) -> (4, I, O)
      out["encoder." + key[: -len("weight")] + "kernel"] = value.transpose(3, 2, 1, 0).reshape(
        4, value.shape[1], value.shape[0]
      )
    elif key.endswith("dwconv.weight"):  # (C, 1, 7, 7) -> (49, C)
      out["encoder." + key[: -len("weight")] + "kernel"] = (
        value[:, 0].transpose(2, 1, 0).reshape(49, value.shape[0])
      )
    elif re.fullmatch(r"downsample_layers\.\d\.1\.bias", key) or key.endswith("dwconv.bias"):
      out["encoder." + key] = value.reshape(1, -1)
    elif ".pwconv" in key:
      out["encoder." + ".".join(parts[:-1] + ["linear", parts[-1]])] = value
    elif ".grn." in key:
      out["encoder." + key] = value.reshape(1, -1)
    else:
      raise AssertionError(f"unmapped official key {key}")
  return out


FCMAE_DECODER = {  # present in FCMAE pretraining state dicts; must be skipped, not converted
  "proj.weight": np.zeros((512, 320, 1, 1), np.float32),
  "proj.bias": np.zeros((512,), np.float32),
  "mask_token": np.zeros((1, 512, 1, 1), np.float32),
  "decoder.0.dwconv.weight": np.zeros((512, 1, 7, 7), np.float32),
  "pred.weight": np.zeros((3072, 512, 1, 1), np.float32),
  "pred.bias": np.zeros((3072,), np.float32),
}


def torch_save(sd: dict, path, **extra):
  torch.save(
    {"model": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, **extra}, path
  )
