"""models/hub.py: hf:REPO[@REVISION] through the real huggingface_hub code, offline, from a hub
cache written here in the hub's on-disk layout (tests/models/hub_cache.py): a transformers-format
repository (config.json + pytorch_model.bin) and a timm-format FCMAE encoder (model.safetensors),
both of small random weights; exact against the PyTorch model of the same files. The online
errors, which cannot be provoked without the Hub, are checked by their classes."""

from __future__ import annotations

import json
import types

import httpx2
import jax
import numpy as np
import pytest
import torch
from huggingface_hub import constants
from huggingface_hub import errors as hub_errors
from safetensors.numpy import save as safetensors_bytes

from models import convert, converted, hub, state_dict
from models import pretrained as weights
from tests.models.hub_cache import json_bytes, write_repo
from tests.models.reference import hf_model, hf_to_official, official_to_timm, state_dict_numpy
from tests.models.test_convert import (
  assert_parity,
  images,
  ours_cached,
  torch_logits,
  torch_mean_features,
)

pytestmark = pytest.mark.xdist_group("hub")  # one worker builds the module's cache
HF_REPO, TIMM_REPO = "facebook/convnextv2-atto-1k-224", "timm/convnextv2_atto.fcmae"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """HF_HOME with a hub cache of both repositories; the timm one also tagged v1."""
  home = tmp_path_factory.mktemp("hf_home")
  model = hf_model("atto", 10, seed=0)
  bin_path = home / "pytorch_model.bin"
  torch.save(model.state_dict(), bin_path)
  hf_commit = write_repo(
    home / "hub",
    HF_REPO,
    {
      "config.json": model.config.to_json_string().encode(),
      "pytorch_model.bin": bin_path.read_bytes(),
    },
  )
  bin_path.unlink()
  encoder = {
    k: np.ascontiguousarray(v)
    for k, v in official_to_timm(hf_to_official(state_dict_numpy(model))).items()
    if not k.startswith("head.")
  }
  timm_config = {"architecture": "convnextv2_atto", "num_classes": 0, "num_features": 320}
  timm_commit = write_repo(
    home / "hub",
    TIMM_REPO,
    {"config.json": json_bytes(timm_config), "model.safetensors": safetensors_bytes(encoder)},
    refs=("main", "v1"),
  )
  return types.SimpleNamespace(
    home=home, model=model, encoder=encoder, hf_commit=hf_commit, timm_commit=timm_commit
  )


@pytest.fixture
def offline(cache, monkeypatch):
  """This process's huggingface_hub reads `cache` offline (it read its environment at import)."""
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache.home / "hub"))
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  return cache


def test_convert_command_from_the_hub_cache_is_exact(offline, tmp_path, capsys):
  """`python -m models.convert hf:... OUT` (in this process: the bad-input rows of
  tests/test_bad_inputs.py run it with HF_HOME and HF_HUB_OFFLINE=1 in its environment)."""
  cache, out = offline, tmp_path / "atto"
  assert convert.main([f"hf:{HF_REPO}", str(out)]) == 0
  assert cache.hf_commit in capsys.readouterr().out
  config = json.loads((out / "config.json").read_text())
  assert (config["variant"], config["num_classes"], config["source_format"]) == ("atto", 10, "hf")
  assert (config["hub_repo"], config["hub_revision"], config["hub_commit"]) == (
    HF_REPO,
    "main",
    cache.hf_commit,
  )
  x = images(64)
  assert_parity(
    "hf:facebook/... (pytorch_model.bin from the hub cache), atto, 64px",
    ours_cached("atto", 10, converted.load_params(out)[0], x, depthwise_impl="xla", scan=True),
    torch_logits(cache.model, x),
  )


def test_timm_fcmae_encoder_by_name_tag_and_commit(offline):
  params = weights.read_params(f"hf:{TIMM_REPO}")
  for revision in ("v1", offline.timm_commit):
    jax.tree.map(
      np.testing.assert_array_equal, weights.read_params(f"hf:{TIMM_REPO}@{revision}"), params
    )
  snapshot = hub.fetch(f"hf:{TIMM_REPO}@v1")
  assert (snapshot.revision, snapshot.commit) == ("v1", offline.timm_commit)
  assert snapshot.pinned == f"hf:{TIMM_REPO}@{offline.timm_commit}"
  assert "head" not in params and "norm" not in params
  x = images(64)
  assert_parity(
    "hf:timm/... (FCMAE encoder, model.safetensors from the hub cache), atto, 64px, features",
    ours_cached("atto", 0, params, x, depthwise_impl="xla", scan=True),
    torch_mean_features(offline.model, x),
  )


def test_finetuning_starts_from_the_encoder_by_hub_name(offline, tmp_path):
  """finetune.py's load_config pins init_from to the commit; the task loads those weights."""
  from classify import task as finetune_task
  from tests.helpers import finetune_config
  from trainer import cli

  config = finetune_config(init_from=f"hf:{TIMM_REPO}")
  flag_values = types.SimpleNamespace(config=config, workdir=str(tmp_path / "ft"), compile_only="")
  config = cli.load_config(flag_values)
  assert config.init_from == f"hf:{TIMM_REPO}@{offline.timm_commit}"
  task = finetune_task.make_task(config, str(tmp_path / "ft"))
  fresh = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), jax.eval_shape(task.fresh_params))
  params = task.load_pretrained(fresh)
  expected, _ = state_dict.to_params(offline.encoder)
  for name in ("stem", "stage0", "stage3"):
    jax.tree.map(np.testing.assert_array_equal, params[name], expected[name])


def _http_error(cls, status: int):
  request = httpx2.Request("GET", "https://huggingface.co/api/models/acme/x")
  return cls(
    "the Hub's several-paragraph message", response=httpx2.Response(status, request=request)
  )


@pytest.mark.parametrize(
  "error, words",
  [
    (lambda: _http_error(hub_errors.RepositoryNotFoundError, 404), ["no repository 'acme/x'"]),
    (lambda: _http_error(hub_errors.GatedRepoError, 403), ["acme/x is gated", "hf auth login"]),
    (lambda: _http_error(hub_errors.RevisionNotFoundError, 404), ["has no revision 'v9'"]),
    (lambda: _http_error(hub_errors.HfHubHTTPError, 500), ["the Hugging Face Hub answered"]),
    (
      lambda: hub_errors.LocalEntryNotFoundError("no network"),
      ["cannot be reached", "hf download"],
    ),
  ],
  ids=["unknown_repository", "gated", "unknown_revision", "server_error", "no_network"],
)
def test_online_errors_are_one_line(error, words):
  """What the Hub answers online (not reachable from the tests), by the classes it raises."""
  with pytest.raises(hub.HubError) as raised:
    with hub._readable_errors("hf:acme/x@v9", "acme/x", "v9"):
      raise error()
  message = str(raised.value)
  assert "\n" not in message and message.startswith("hf:acme/x@v9")
  for word in words:
    assert word in message, (word, message)


def test_bad_names_and_what_a_repository_holds(offline):
  with pytest.raises(hub.HubError, match="not hf:REPO"):
    hub.parse("hf:a/b/c")
  with pytest.raises(hub.HubError, match="nothing after '@'"):
    hub.parse(f"hf:{TIMM_REPO}@")
  write_repo(offline.home / "hub", "acme/bert", {"config.json": json_bytes({"model_type": "bert"})})
  with pytest.raises(hub.HubError, match="holds no ConvNeXt V2 weights.*'bert'"):
    weights.read_params("hf:acme/bert")
  readme = {"README.md": b"notes"}
  write_repo(offline.home / "hub", "acme/notes", readme, listing=readme)
  with pytest.raises(hub.HubError, match="holds no ConvNeXt V2 weights.*it holds README.md"):
    weights.read_params("hf:acme/notes")
  write_repo(offline.home / "hub", "acme/unlisted", readme)  # listing unknown: maybe not cached
  with pytest.raises(hub.HubError, match="not in the local Hugging Face cache"):
    weights.read_params("hf:acme/unlisted")
  listed = {**readme, "model.safetensors": b"weights never downloaded"}
  write_repo(offline.home / "hub", "acme/partial", readme, listing=listed)
  with pytest.raises(hub.HubError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE=1"):
    weights.read_params("hf:acme/partial")
