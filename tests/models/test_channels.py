"""models/channels.py and the channel count through conversion and export: a 4-channel ConvNeXt V2
in timm's names (a random transformers model of num_channels=4, mapped by the hand-written key maps
of tests/models/reference.py) converts (python -m models.convert) to a model with the transformers
model's features, and exports to a transformers ConvNextV2Model of 4 channels with the same hidden
states. The adaptation of 3-channel weights is checked exactly against timm's adapt_input_conv
rule, written out in torch in tests/models/reference.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from models import channels, convert, converted
from tests.models.reference import adapt_input_conv_reference, hf_model, timm_encoder


def test_a_4_channel_model_converts_and_exports_exactly(tmp_path):
  model = hf_model("atto", 10, seed=5, num_channels=4)
  reference = model.convnextv2
  save_file(timm_encoder(model), str(tmp_path / "timm4.safetensors"))
  assert convert.main([str(tmp_path / "timm4.safetensors"), str(tmp_path / "ckpt")]) == 0
  assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["in_chans"] == 4
  apply_fn, params = converted.load(tmp_path / "ckpt", depthwise_impl="xla")
  x = np.random.default_rng(0).standard_normal((2, 64, 64, 4)).astype(np.float32)
  with torch.no_grad():
    theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).last_hidden_state
  np.testing.assert_allclose(apply_fn(params, x), theirs.mean((2, 3)), atol=2e-5, rtol=1e-4)
  assert convert.main(["--export", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
  from transformers import ConvNextV2Model

  hf = ConvNextV2Model.from_pretrained(tmp_path / "hf").eval()
  assert hf.config.num_channels == 4
  with torch.no_grad():
    hidden = hf(torch.from_numpy(x.transpose(0, 3, 1, 2))).last_hidden_state
  np.testing.assert_allclose(hidden.numpy(), theirs.numpy(), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("in_chans", [1, 2, 4])
def test_3_channel_stems_are_adapted_by_timms_rule_exactly(in_chans):
  weight = torch.randn(40, 3, 4, 4, generator=torch.Generator().manual_seed(in_chans))
  expected = adapt_input_conv_reference(in_chans, weight).numpy().transpose(2, 3, 1, 0)
  ours = channels.adapt_kernel(weight.numpy().transpose(2, 3, 1, 0), in_chans)
  assert ours.dtype == np.float32 and ours.shape == (4, 4, in_chans, 40)
  np.testing.assert_allclose(ours, expected, rtol=1e-7, atol=0)


def test_pairs_timm_has_no_rule_for_are_refused():
  kernel = np.ones((4, 4, 1, 8), np.float32)
  assert channels.adapt_kernel(kernel, 1) is not None
  with pytest.raises(ValueError, match="Cannot adapt a 1-channel stem to 4 channels"):
    channels.adapt_kernel(kernel, 4)
