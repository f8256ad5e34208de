"""models/channels.py and the channel count through conversion and export: a 4-channel timm
ConvNeXt V2 converts (python -m models.convert) to a model with timm's features, and exports to a
transformers ConvNextV2Model of 4 channels with the same hidden states. (The adaptation of
3-channel weights is checked against timm's adapt_input_conv in tests/fcmae/test_pretrained.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from safetensors.numpy import save_file

from models import channels, convert, converted


def test_a_4_channel_model_converts_and_exports_exactly(tmp_path):
  torch.manual_seed(0)
  model = timm.create_model("convnextv2_atto", pretrained=False, num_classes=0, in_chans=4).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  save_file(sd, str(tmp_path / "timm4.safetensors"))
  assert convert.main([str(tmp_path / "timm4.safetensors"), str(tmp_path / "ckpt")]) == 0
  assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["in_chans"] == 4
  apply_fn, params = converted.load(tmp_path / "ckpt", depthwise_impl="xla")
  x = np.random.default_rng(0).standard_normal((2, 64, 64, 4)).astype(np.float32)
  with torch.no_grad():
    theirs = model.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(apply_fn(params, x), theirs.mean((2, 3)), atol=2e-5, rtol=1e-4)
  assert convert.main(["--export", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
  from transformers import ConvNextV2Model

  hf = ConvNextV2Model.from_pretrained(tmp_path / "hf").eval()
  assert hf.config.num_channels == 4
  with torch.no_grad():
    hidden = hf(torch.from_numpy(x.transpose(0, 3, 1, 2))).last_hidden_state
  np.testing.assert_allclose(hidden.numpy(), theirs.numpy(), atol=2e-5, rtol=1e-4)


def test_pairs_timm_has_no_rule_for_are_refused():
  kernel = np.ones((4, 4, 1, 8), np.float32)
  assert channels.adapt_kernel(kernel, 1) is not None
  with pytest.raises(ValueError, match="Cannot adapt a 1-channel stem to 4 channels"):
    channels.adapt_kernel(kernel, 4)
