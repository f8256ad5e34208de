"""Independent references for the conversion tests: random transformers ConvNextV2 models and
key maps written out by hand from docs/reference.md, section 4 (not with models/state_dict.py's
own tables)."""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

from models import convnextv2 as cv


def hf_model(variant: str, num_labels: int, seed: int = 0, num_channels: int = 3):
  """A random transformers ConvNextV2ForImageClassification with non-trivial norms/GRN/biases,
  for images of num_channels channels."""
  spec = cv.VARIANTS[variant]
  torch.manual_seed(seed)
  config = ConvNextV2Config(
    hidden_sizes=list(spec["dims"]),
    depths=list(spec["depths"]),
    num_labels=num_labels,
    num_channels=num_channels,
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


def timm_encoder(model) -> dict[str, np.ndarray]:
  """The state dict timm's convnextv2_* with num_classes=0 has (an FCMAE hub repository's
  model.safetensors) for the weights of an hf_model: every tensor but head.fc, contiguous."""
  return {
    k: np.ascontiguousarray(v)
    for k, v in official_to_timm(hf_to_official(state_dict_numpy(model))).items()
    if not k.startswith("head.fc.")
  }


def adapt_input_conv_reference(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
  """timm's documented rule (timm.models._manipulate.adapt_input_conv) for putting 3-channel
  (RGB) weights in a first conv of in_chans inputs, written here in torch. weight is OIHW; the
  rule works in float32 (the weight is cast to float32 first and back to its dtype after):
    in_chans == 1:        the kernel summed over its 3 input channels (keepdim);
    in_chans == 2 or > 3: the 3 channels repeated ceil(in_chans / 3) times, cut to in_chans,
                          and scaled by 3 / in_chans;
    in_chans == 3:        unchanged."""
  dtype = weight.dtype
  weight = weight.float()
  assert weight.shape[1] == 3, "the rule adapts 3-channel weights"
  if in_chans == 1:
    weight = weight.sum(dim=1, keepdim=True)
  elif in_chans != 3:
    weight = weight.repeat(1, math.ceil(in_chans / 3), 1, 1)[:, :in_chans]
    weight = weight * (3 / float(in_chans))
  return weight.to(dtype)


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
