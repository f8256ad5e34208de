"""fcmae/pretrained.py: pretraining's init_from. From a timm `.fcmae` hub repository (written in
the hub's on-disk layout: timm's convnextv2 state dict, built from a random transformers model by
the hand-written key maps of tests/models/reference.py, as model.safetensors + config.json) the
encoder is exactly the file's (and computes the transformers ConvNextV2Model's features of the same
weights), with the stem adapted to 1 or 4 channels exactly as timm's adapt_input_conv rule
(tests/models/reference.py's adapt_input_conv_reference); from an official FCMAE .pt and from an
FCMAE workdir the decoder, projection, mask token and pixel head are loaded too."""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest
import torch
from huggingface_hub import constants
from safetensors.numpy import save as safetensors_bytes

from configs import fcmae_demo
from fcmae import pretrain
from models import convnextv2
from tests.helpers import SCAN, finetune_config, override
from tests.models.hub_cache import json_bytes, write_repo
from tests.models.reference import adapt_input_conv_reference, hf_model, timm_encoder
from trainer import cli

REPO = "timm/convnextv2_atto.fcmae"
DECODER = ("proj", "mask_token", "decoder", "pred")


@pytest.fixture(scope="module")
def timm_repo(tmp_path_factory):
  """The hub cache of an Atto FCMAE encoder in timm's format (random weights, no GRN or norm an
  identity); `model` is the transformers ConvNextV2Model of the same weights."""
  hf = hf_model("atto", 10, seed=3)
  sd = timm_encoder(hf)
  model = hf.convnextv2
  home = tmp_path_factory.mktemp("hf_home")
  config = {"architecture": "convnextv2_atto", "num_classes": 0, "num_features": 320}
  files = {"config.json": json_bytes(config), "model.safetensors": safetensors_bytes(sd)}
  commit = write_repo(home / "hub", REPO, files)
  return types.SimpleNamespace(home=home, model=model, sd=sd, commit=commit)


@pytest.fixture
def offline(timm_repo, monkeypatch):
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(timm_repo.home / "hub"))
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  return timm_repo


def pretrain_config(**changes):
  return override(
    fcmae_demo.get_config(),
    {
      "batch_size": 8,
      "total_steps": 1,
      "warmup_steps": 1,
      "eval_every_steps": 0,
      "data.image_size": 64,
      "mesh.data": 1,
      "mesh.fsdp": 1,
      "probe.enabled": False,
      **SCAN,
      **changes,
    },
  )


def start(config, tmp_path, capsys):
  """What train.py does before the first step: load_config (hf: pinned to its commit), a fresh
  init (zeros of the init's shapes: what is not loaded must stay as it was), then the task's
  load_pretrained. Returns (config, fresh params, loaded params, log)."""
  flag_values = types.SimpleNamespace(config=config, workdir=str(tmp_path / "w"), compile_only="")
  config = cli.load_config(flag_values)
  task = pretrain.make_task(config, None)
  fresh = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), jax.eval_shape(task.fresh_params))
  capsys.readouterr()
  params = task.load_pretrained(fresh)
  return config, fresh, params, capsys.readouterr().out


def hwio(oihw):
  return np.asarray(oihw).transpose(2, 3, 1, 0)


def io(out_in):
  """A PyTorch Linear or 1x1-conv weight (out, in[, 1, 1]) as our (in, out) kernel."""
  return np.asarray(out_in).reshape(out_in.shape[0], -1).T


def test_pretraining_starts_from_the_published_encoder_of_the_hub_cache(offline, tmp_path, capsys):
  config, fresh, params, log = start(pretrain_config(init_from=f"hf:{REPO}"), tmp_path, capsys)
  assert config.init_from == f"hf:{REPO}@{offline.commit}"
  sd, encoder = offline.sd, params["encoder"]
  # Every tensor is the file's, compared by name and layout written out here.
  np.testing.assert_array_equal(encoder["stem"]["conv"]["kernel"], hwio(sd["stem.0.weight"]))
  np.testing.assert_array_equal(encoder["stem"]["norm"]["scale"], sd["stem.1.weight"])
  np.testing.assert_array_equal(
    encoder["downsample2"]["conv"]["kernel"], hwio(sd["stages.2.downsample.1.weight"])
  )
  blocks = encoder["stage2"]["blocks"]
  for j in range(6):
    b = f"stages.2.blocks.{j}"
    np.testing.assert_array_equal(blocks["dwconv"]["kernel"][j], hwio(sd[f"{b}.conv_dw.weight"]))
    np.testing.assert_array_equal(blocks["pwconv1"]["kernel"][j], io(sd[f"{b}.mlp.fc1.weight"]))
    np.testing.assert_array_equal(blocks["grn"]["gamma"][j], sd[f"{b}.mlp.grn.weight"].ravel())
    np.testing.assert_array_equal(blocks["pwconv2"]["kernel"][j], io(sd[f"{b}.mlp.fc2.weight"]))
  # ... and all of them: the encoder computes the transformers model's features (the mean of its
  # last stage, before the head's norm, as timm's forward_features + mean).
  x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
  apply_fn, _ = convnextv2.build("atto", 0, abstract=True, depthwise_impl="xla")
  ours = np.asarray(apply_fn(encoder, x))
  with torch.no_grad():
    theirs = offline.model(torch.from_numpy(x.transpose(0, 3, 1, 2))).last_hidden_state
  np.testing.assert_allclose(ours, theirs.mean((2, 3)).numpy(), atol=2e-5, rtol=1e-4)
  for part in DECODER:  # the repository has no decoder: it keeps its fresh init
    jax.tree.map(np.testing.assert_array_equal, params[part], fresh[part])
  assert log.count("init_from") == 1, log
  assert f"init_from hf:{REPO}@{offline.commit}: loaded encoder (" in log
  assert "freshly initialised: proj, mask_token, decoder, pred (the source has no decoder)" in log


@pytest.mark.parametrize("in_chans", [1, 4])
def test_3_channel_weights_in_c_channels_follow_timms_adapt_input_conv_rule(
  offline, in_chans, tmp_path, capsys
):
  stem = torch.from_numpy(offline.sd["stem.0.weight"])
  expected = hwio(adapt_input_conv_reference(in_chans, stem))
  # Pretraining: the stem adapted, the rest as in the file, the pixel head 32*32*C wide.
  _, _, params, log = start(
    pretrain_config(init_from=f"hf:{REPO}", **{"model.in_chans": in_chans}), tmp_path, capsys
  )
  np.testing.assert_allclose(
    params["encoder"]["stem"]["conv"]["kernel"], expected, rtol=1e-7, atol=0
  )
  np.testing.assert_array_equal(
    params["encoder"]["stem"]["conv"]["bias"], offline.sd["stem.0.bias"]
  )
  assert params["pred"]["kernel"].shape == (512, 32 * 32 * in_chans)
  assert f"stem adapted from 3 to {in_chans} input channels" in log
  # Finetuning: the same stem.
  from classify import task as finetune_task

  flag_values = types.SimpleNamespace(
    config=finetune_config(
      init_from=f"hf:{REPO}",
      **{
        "model.in_chans": in_chans,  # C other than 3: the pretraining's statistics are given
        "data.mean": ",".join(["0.5"] * in_chans),
        "data.std": ",".join(["0.25"] * in_chans),
      },
    ),
    workdir=str(tmp_path / "ft"),
    compile_only="",
  )
  config = cli.load_config(flag_values)
  task = finetune_task.make_task(config, None)
  fresh = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), jax.eval_shape(task.fresh_params))
  params = task.load_pretrained(fresh)
  np.testing.assert_allclose(params["stem"]["conv"]["kernel"], expected, rtol=1e-7, atol=0)


def official_decoder(rng, dim=512, c3=320, pixels=3072):
  """An FCMAE decoder in the official state dict's names and PyTorch layouts (one block)."""
  shapes = {
    "proj.weight": (dim, c3, 1, 1),
    "proj.bias": (dim,),
    "mask_token": (1, dim, 1, 1),
    "decoder.0.dwconv.weight": (dim, 1, 7, 7),
    "decoder.0.dwconv.bias": (dim,),
    "decoder.0.norm.weight": (dim,),
    "decoder.0.norm.bias": (dim,),
    "decoder.0.pwconv1.weight": (4 * dim, dim),
    "decoder.0.pwconv1.bias": (4 * dim,),
    "decoder.0.grn.gamma": (1, 1, 1, 4 * dim),
    "decoder.0.grn.beta": (1, 1, 1, 4 * dim),
    "decoder.0.pwconv2.weight": (dim, 4 * dim),
    "decoder.0.pwconv2.bias": (dim,),
    "pred.weight": (pixels, dim, 1, 1),
    "pred.bias": (pixels,),
  }
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def test_an_official_fcmae_pt_gives_encoder_and_decoder(tmp_path, capsys):
  from tests.models.reference import hf_model, hf_to_official, state_dict_numpy, torch_save

  encoder = {
    k: v
    for k, v in hf_to_official(state_dict_numpy(hf_model("atto", 10, seed=0))).items()
    if not k.startswith(("norm.", "head."))
  }
  decoder = official_decoder(np.random.default_rng(0))
  torch_save({**encoder, **decoder}, tmp_path / "convnextv2_atto_1k_224_fcmae.pt")
  source = str(tmp_path / "convnextv2_atto_1k_224_fcmae.pt")
  _, _, params, log = start(pretrain_config(init_from=source), tmp_path, capsys)
  np.testing.assert_array_equal(
    params["encoder"]["stem"]["conv"]["kernel"], hwio(encoder["downsample_layers.0.0.weight"])
  )
  np.testing.assert_array_equal(params["mask_token"], decoder["mask_token"].reshape(-1))
  np.testing.assert_array_equal(params["proj"]["kernel"], decoder["proj.weight"][:, :, 0, 0].T)
  np.testing.assert_array_equal(params["pred"]["kernel"], decoder["pred.weight"][:, :, 0, 0].T)
  np.testing.assert_array_equal(params["pred"]["bias"], decoder["pred.bias"])
  block = params["decoder"]["blocks"]
  np.testing.assert_array_equal(
    block["dwconv"]["kernel"][0], hwio(decoder["decoder.0.dwconv.weight"])
  )
  np.testing.assert_array_equal(block["norm"]["scale"][0], decoder["decoder.0.norm.weight"])
  np.testing.assert_array_equal(
    block["pwconv1"]["kernel"][0], decoder["decoder.0.pwconv1.weight"].T
  )
  np.testing.assert_array_equal(block["grn"]["beta"][0], decoder["decoder.0.grn.beta"].reshape(-1))
  np.testing.assert_array_equal(
    block["pwconv2"]["kernel"][0], decoder["decoder.0.pwconv2.weight"].T
  )
  assert "loaded encoder (" in log and "), proj, mask_token, decoder, pred." in log, log
  # One channel: the RGB pixel head does not fit 32*32*1 values, so it alone starts fresh.
  _, fresh, params, log = start(
    pretrain_config(init_from=source, **{"model.in_chans": 1}), tmp_path, capsys
  )
  np.testing.assert_array_equal(params["mask_token"], decoder["mask_token"].reshape(-1))
  jax.tree.map(np.testing.assert_array_equal, params["pred"], fresh["pred"])
  assert "freshly initialised: pred (other shapes in the source)" in log, log


def test_an_fcmae_workdir_gives_its_decoder_and_mask_token(tmp_path, capsys):
  """A workdir whose checkpoint the training loop's own checkpointer wrote (params drawn at
  random, so that nothing equals a fresh init by chance)."""
  import os

  from trainer import checkpoint

  config = pretrain_config()
  shapes = jax.eval_shape(pretrain.make_task(config, None).fresh_params)
  leaves, treedef = jax.tree.flatten(shapes)
  rng = np.random.default_rng(0)
  trained = jax.tree.unflatten(
    treedef, [rng.standard_normal(a.shape).astype(a.dtype) for a in leaves]
  )
  workdir = str(tmp_path / "first")
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  ckpt.save(7, {"params": trained, "step": np.int32(7)})
  ckpt.close()
  _, fresh, params, log = start(pretrain_config(init_from=workdir), tmp_path, capsys)
  for part in ("encoder", *DECODER):
    jax.tree.map(np.testing.assert_array_equal, params[part], trained[part])
  assert f"init_from {workdir}: loaded encoder (" in log and "freshly" not in log, log
