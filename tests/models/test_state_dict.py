"""models/state_dict.py: formats and variants recognised from the keys, and every missing,
unexpected or wrongly shaped key named."""

import numpy as np
import pytest

from models import formats, state_dict
from tests.models.reference import hf_model, hf_to_official, state_dict_numpy


@pytest.fixture(scope="module")
def atto():
  return dict(sd=state_dict_numpy(hf_model("atto", 10, seed=0)))


def test_key_and_shape_mismatch_lists_keys(atto):
  sd = dict(atto["sd"])
  del sd["convnextv2.encoder.stages.2.layers.3.pwconv1.weight"]
  sd["convnextv2.encoder.stages.1.layers.0.dwconv.weight"] = np.zeros((80, 1, 5, 5), np.float32)
  sd["convnextv2.encoder.stages.1.layers.0.extra.weight"] = np.zeros((3,), np.float32)
  with pytest.raises(formats.ConversionError) as error:
    state_dict.to_params(sd)
  message = str(error.value)
  print("\n" + message)
  assert "missing (1): convnextv2.encoder.stages.2.layers.3.pwconv1.weight" in message
  assert "unexpected (1): convnextv2.encoder.stages.1.layers.0.extra.weight" in message
  assert (
    "wrong shape (1): convnextv2.encoder.stages.1.layers.0.dwconv.weight expected (80, 1, 7, 7) "
    "got (80, 1, 5, 5)"
  ) in message


def test_unknown_format_names_keys():
  with pytest.raises(
    formats.ConversionError,
    match=r"Unrecognised checkpoint format: 2 keys, e\.g\. "
    r"backbone\.conv1\.weight, fc\.weight",
  ):
    state_dict.to_params({"backbone.conv1.weight": np.zeros((1,)), "fc.weight": np.zeros((1,))})


def test_variant_inference_and_mismatch(atto):
  sd = hf_to_official(atto["sd"])
  assert state_dict.to_params(sd)[1]["variant"] == "atto"
  assert state_dict.to_params(sd, "atto")[1]["variant"] == "atto"
  with pytest.raises(formats.ConversionError, match=r"--variant femto .* disagrees .* atto"):
    state_dict.to_params(sd, "femto")
  with pytest.raises(formats.ConversionError, match="Unknown ConvNeXt V2 variant 'giant'"):
    state_dict.to_params(sd, "giant")
