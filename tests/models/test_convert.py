"""models/convert.py: parity with transformers' PyTorch ConvNextV2 through every file format,
export back to Hugging Face, and safe, atomic file handling.

The reference is transformers' ConvNextV2 (an implementation independent of ours), randomly
initialised, with every LayerNorm, GRN and bias set to non-zero random values (they start at
1/0, 0/0 and 0, which would hide mapping bugs), in eval mode. The official, FCMAE and timm files
are written here from the Hugging Face weights with the key maps of tests/models/reference.py.
`pytest -s` prints each parity case's max |ours - torch| / max |torch|.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import pytest
import torch
from transformers import ConvNextV2ForImageClassification, ConvNextV2Model

from models import checkpoint_files, convert, converted, export, formats, state_dict
from models import convnextv2 as cv
from tests.models.reference import (
  FCMAE_DECODER,
  hf_model,
  hf_to_official,
  official_to_sparse_fcmae,
  official_to_timm,
  state_dict_numpy,
  torch_save,
)

# Its tests share a module fixture: one worker runs them all (pytest-xdist --dist loadgroup).
pytestmark = pytest.mark.xdist_group("convert")


def images(resolution: int, batch: int = 2, seed: int = 0) -> np.ndarray:
  """NCHW float32 for torch; transpose to NHWC for ours."""
  return np.random.RandomState(seed).randn(batch, 3, resolution, resolution).astype(np.float32)


def torch_logits(model, x: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(x)).logits.numpy()


def torch_mean_features(model, x: np.ndarray) -> np.ndarray:
  """Mean over H, W of the last stage: HF's pooler_output *before* its final layernorm."""
  base = model.convnextv2 if hasattr(model, "convnextv2") else model
  with torch.no_grad():
    return base(torch.from_numpy(x)).last_hidden_state.mean(dim=(-2, -1)).numpy()


def ours(apply_fn, params, x: np.ndarray) -> np.ndarray:
  """Our output for NCHW x (jitted: one compile is cheaper than eager's per-op compiles)."""
  return np.asarray(jax.jit(apply_fn)(params, x.transpose(0, 2, 3, 1)))


_JITTED: dict = {}


def ours_cached(variant: str, num_classes: int, params, x: np.ndarray, **options) -> np.ndarray:
  """Like `ours` with one jitted model per configuration shared across tests (compiling is
  most of this file's run time)."""
  key = (variant, num_classes, tuple(sorted(options.items())))
  if key not in _JITTED:
    _JITTED[key] = jax.jit(cv.build(variant, num_classes, abstract=True, **options)[0])
  return np.asarray(_JITTED[key](params, x.transpose(0, 2, 3, 1)))


def assert_parity(case: str, got: np.ndarray, want: np.ndarray) -> float:
  scale = float(np.abs(want).max())
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
  rel = float(np.abs(got - want).max() / scale)
  print(f"\n[parity] {case}: max |ours - torch| / max |torch| = {rel:.2e}")
  return rel


@pytest.fixture(scope="module")
def atto(tmp_path_factory):
  """A random HF atto (10 classes), its save_pretrained directory and its conversion."""
  root = tmp_path_factory.mktemp("atto")
  model = hf_model("atto", 10, seed=0)
  model.save_pretrained(root / "hf")
  assert (root / "hf" / "model.safetensors").is_file()
  assert convert.main([str(root / "hf"), str(root / "ckpt")]) == 0
  return dict(model=model, hf=root / "hf", ckpt=root / "ckpt", sd=state_dict_numpy(model))


@pytest.fixture(scope="module")
def atto_default_logits(atto):
  """Our logits (64px) from load() with the default (CPU: shifted-slice) depthwise conv."""
  apply_fn, params = converted.load(atto["ckpt"])
  return ours(apply_fn, params, images(64))


def test_hf_directory_atto_default_impl(atto, atto_default_logits):
  """save_pretrained dir -> CLI -> load; the default depthwise conv."""
  config = json.loads((atto["ckpt"] / "config.json").read_text())
  assert (
    config["variant"] == "atto" and config["num_classes"] == 10 and config["source_format"] == "hf"
  )
  assert_parity(
    "hf dir, atto, 64px, default impl", atto_default_logits, torch_logits(atto["model"], images(64))
  )


@pytest.mark.parametrize("variant,resolution,num_labels", [("femto", 96, 1000), ("nano", 64, 10)])
def test_hf_directory_parity(tmp_path, variant, resolution, num_labels):
  model = hf_model(variant, num_labels, seed=1)
  model.save_pretrained(tmp_path / "hf")
  assert convert.main([str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
  apply_fn, params = converted.load(tmp_path / "ckpt", depthwise_impl="xla")
  x = images(resolution)
  assert_parity(
    f"hf dir, {variant}, {resolution}px, {num_labels} classes",
    ours(apply_fn, params, x),
    torch_logits(model, x),
  )


def test_scan_model_loads_same_params(atto, atto_default_logits):
  x = images(64)
  scanned = ours(*converted.load(atto["ckpt"], depthwise_impl="xla", scan=True), x)
  np.testing.assert_allclose(
    scanned, atto_default_logits, rtol=1e-5, atol=1e-6 * np.abs(scanned).max()
  )
  assert_parity("hf dir, atto, 64px, scan=True (xla impl)", scanned, torch_logits(atto["model"], x))


def test_official_pt_parity(tmp_path):
  """An IN-1K-style official file: {'model': sd, 'epoch', 'args'} with official key names."""
  model = hf_model("femto", 1000, seed=2)
  torch_save(
    hf_to_official(state_dict_numpy(model)),
    tmp_path / "convnextv2_femto_1k_224_ema.pt",
    epoch=3,
    args=argparse.Namespace(model="convnextv2_femto"),
  )
  assert (
    convert.main([str(tmp_path / "convnextv2_femto_1k_224_ema.pt"), str(tmp_path / "ckpt")]) == 0
  )
  config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
  assert (config["source_format"], config["variant"], config["num_classes"]) == (
    "official",
    "femto",
    1000,
  )
  apply_fn, params = converted.load(tmp_path / "ckpt", depthwise_impl="xla")
  x = images(64)
  assert_parity(
    "official .pt, femto, 64px, 1000 classes", ours(apply_fn, params, x), torch_logits(model, x)
  )
  # --export straight from the official file gives back the HF tensors exactly.
  assert (
    convert.main(
      ["--export", str(tmp_path / "convnextv2_femto_1k_224_ema.pt"), str(tmp_path / "hf")]
    )
    == 0
  )
  exported, original = checkpoint_files.read_state_dict(tmp_path / "hf"), state_dict_numpy(model)
  assert exported.keys() == original.keys()
  for key in original:
    np.testing.assert_array_equal(exported[key], original[key])


def test_fcmae_encoder_pt_parity(tmp_path, atto):
  """Encoder-only FCMAE files (no norm/head, decoder keys present), dense official names and the
  sparse (MinkowskiEngine) layout -> num_classes 0 -> the same params; pooled features == mean
  over H, W of HF's last_hidden_state (its pooler_output adds a layernorm)."""
  dense = {
    k: v for k, v in hf_to_official(atto["sd"]).items() if not k.startswith(("norm.", "head."))
  }
  loaded = {}
  for layout, sd in (("official", dense), ("fcmae-sparse", official_to_sparse_fcmae(dense))):
    torch_save({**sd, **FCMAE_DECODER}, tmp_path / f"{layout}_fcmae.pt")
    info = convert.convert(tmp_path / f"{layout}_fcmae.pt", tmp_path / layout)
    assert (info["format"], info["variant"], info["num_classes"]) == (layout, "atto", 0)
    assert sorted(k for k, _ in info["skipped"]) == sorted(FCMAE_DECODER)
    loaded[layout] = converted.load(tmp_path / layout)[1]
    assert "head" not in loaded[layout] and "norm" not in loaded[layout]
  jax.tree.map(np.testing.assert_array_equal, loaded["official"], loaded["fcmae-sparse"])
  x = images(64)
  assert_parity(
    "FCMAE .pt (dense and sparse), atto, 64px, pooled features",
    ours_cached("atto", 0, loaded["official"], x, depthwise_impl="xla"),
    torch_mean_features(atto["model"], x),
  )


def test_timm_parity(tmp_path, atto):
  """timm names, 1x1-conv fc1/fc2 and 1-D GRN, as .safetensors and as a bare .pth state dict."""
  sd = official_to_timm(hf_to_official(atto["sd"]))
  assert sd["stages.0.blocks.0.mlp.fc1.weight"].shape == (160, 40, 1, 1)
  assert sd["stages.0.blocks.0.mlp.grn.weight"].shape == (160,)
  from safetensors.numpy import save_file

  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / "timm.safetensors"))
  torch.save(
    {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, tmp_path / "timm.pth"
  )
  loaded = []
  for name in ("timm.safetensors", "timm.pth"):
    info = convert.convert(tmp_path / name, tmp_path / f"ckpt_{name}")
    assert (info["format"], info["variant"], info["num_classes"]) == ("timm", "atto", 10)
    loaded.append(converted.load(tmp_path / f"ckpt_{name}")[1])
  jax.tree.map(np.testing.assert_array_equal, *loaded)
  x = images(64)
  assert_parity(
    "timm .safetensors/.pth, atto, 64px",
    ours_cached("atto", 10, loaded[0], x, depthwise_impl="xla"),
    torch_logits(atto["model"], x),
  )


def test_hf_single_file_and_base_model(tmp_path, atto):
  """A lone model.safetensors (prefixed) and a ConvNextV2Model (unprefixed, final norm skipped)."""
  from safetensors.numpy import save_file

  save_file(atto["sd"], str(tmp_path / "single.safetensors"))
  params, info = state_dict.to_params(
    checkpoint_files.read_state_dict(tmp_path / "single.safetensors")
  )
  assert (info["format"], info["variant"], info["num_classes"]) == ("hf", "atto", 10)
  reference, _ = converted.load_params(atto["ckpt"])
  jax.tree.map(np.testing.assert_array_equal, params, reference)

  # A directory with pytorch_model.bin (torch.save of the bare state dict) and config.json.
  (tmp_path / "bin").mkdir()
  torch.save(atto["model"].state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  (tmp_path / "bin" / "config.json").write_text((atto["hf"] / "config.json").read_text())
  params, info = state_dict.to_params(checkpoint_files.read_state_dict(tmp_path / "bin"))
  jax.tree.map(np.testing.assert_array_equal, params, reference)

  base = {
    k.removeprefix("convnextv2."): v
    for k, v in atto["sd"].items()
    if not k.startswith("classifier.")
  }
  params, info = state_dict.to_params(base)
  assert info["num_classes"] == 0 and [k for k, _ in info["skipped"]] == [
    "layernorm.weight",
    "layernorm.bias",
  ]
  assert "norm" not in params and "head" not in params


def test_half_precision_files_read_as_float32(tmp_path):
  from safetensors.torch import save_file

  tensors = {
    "a": torch.randn(5).to(torch.bfloat16),
    "b": torch.randn(2, 3).to(torch.float16),
    "c": torch.arange(4),
  }
  save_file(tensors, str(tmp_path / "half.safetensors"))
  torch.save(tensors, tmp_path / "half.pt")
  for name in ("half.safetensors", "half.pt"):
    sd = checkpoint_files.read_state_dict(tmp_path / name)
    assert sd["a"].dtype == sd["b"].dtype == np.float32 and sd["c"].dtype == np.int64
    for key in ("a", "b"):
      np.testing.assert_array_equal(sd[key], tensors[key].float().numpy())


def randomized_params(variant: str, num_classes: int, seed: int = 3) -> dict:
  """Random params of our layout: weights N(0, 0.02), GRN / LayerNorm / biases non-trivial."""
  rng = np.random.RandomState(seed)

  def randomize(path, leaf):
    name = "/".join(str(getattr(p, "key", p)) for p in path)
    if name.endswith(("bias", "beta", "gamma")):
      value = 0.3 * rng.randn(*leaf.shape)
    elif name.endswith("scale"):
      value = 1.0 + 0.3 * rng.randn(*leaf.shape)
    else:
      value = 0.02 * rng.randn(*leaf.shape)
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(randomize, cv.abstract_params(variant, num_classes))


def test_export_hf_round_trip(tmp_path):
  params = randomized_params("atto", 10)
  export.export_hf(params, "atto", 10, tmp_path / "hf")
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert config["model_type"] == "convnextv2" and config["num_labels"] == 10
  assert config["depths"] == [2, 2, 6, 2] and config["hidden_sizes"] == [40, 80, 160, 320]
  model = ConvNextV2ForImageClassification.from_pretrained(tmp_path / "hf").eval()
  x = images(64)
  assert_parity(
    "export_hf -> from_pretrained, atto, 64px",
    torch_logits(model, x),
    ours_cached("atto", 10, params, x, depthwise_impl="xla"),
  )

  # Back again (CLI), bit for bit; also through the official names.
  assert convert.main([str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
  back, _ = converted.load_params(tmp_path / "ckpt")
  jax.tree.map(np.testing.assert_array_equal, back, params)
  again, info = state_dict.to_params(state_dict.from_params(params, "atto", "official"))
  assert info["format"] == "official"
  jax.tree.map(np.testing.assert_array_equal, again, params)

  # CLI export of the converted checkpoint writes the same tensors.
  assert convert.main(["--export", str(tmp_path / "ckpt"), str(tmp_path / "hf2")]) == 0
  first = checkpoint_files.read_state_dict(tmp_path / "hf")
  second = checkpoint_files.read_state_dict(tmp_path / "hf2")
  assert first.keys() == second.keys()
  for key in first:
    np.testing.assert_array_equal(first[key], second[key])


def test_export_hf_base_model(tmp_path):
  """num_classes 0 -> ConvNextV2Model; its last_hidden_state mean equals our pooled features."""
  params = randomized_params("atto", 0)
  export.export_hf(params, "atto", 0, tmp_path / "hf")
  model = ConvNextV2Model.from_pretrained(tmp_path / "hf").eval()
  x = images(64)
  assert_parity(
    "export_hf num_classes=0 -> ConvNextV2Model, atto, 64px",
    torch_mean_features(model, x),
    ours_cached("atto", 0, params, x, depthwise_impl="xla"),
  )
  with pytest.raises(formats.ConversionError, match="10 but the params have a 0-class head"):
    export.export_hf(params, "atto", 10, tmp_path / "other")


def test_load_checks_shapes_against_config(tmp_path, atto):
  import shutil

  shutil.copytree(atto["ckpt"], tmp_path / "ckpt")
  config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
  config["variant"] = "femto"
  (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
  with pytest.raises(
    formats.ConversionError,
    match=r"wrong shape \(59\): downsample1/conv/bias expected \(96,\) got \(80,\)",
  ):
    converted.load(tmp_path / "ckpt")


def _tree_snapshot(path):
  return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_refuses_overwrite_and_failures_keep_existing_output(tmp_path, atto, capsys, monkeypatch):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("precious")
  with pytest.raises(converted.OutputExistsError, match="not empty; pass --force"):
    convert.convert(atto["hf"], out)
  assert convert.main([str(atto["hf"]), str(out)]) == 2 and "--force" in capsys.readouterr().err
  assert _tree_snapshot(out) == {out.joinpath("keep.txt").relative_to(out): b"precious"}

  # --force with a broken source: the conversion fails, OUT is untouched.
  broken = dict(atto["sd"])
  del broken["classifier.bias"]
  from safetensors.numpy import save_file

  save_file(broken, str(tmp_path / "broken.safetensors"))
  assert convert.main([str(tmp_path / "broken.safetensors"), str(out), "--force"]) == 2
  assert "missing (1): classifier.bias" in capsys.readouterr().err
  assert (out / "keep.txt").read_text() == "precious"

  # A good conversion with --force replaces OUT; a failure while writing leaves that intact.
  assert convert.main([str(atto["hf"]), str(out), "--force"]) == 0
  before = _tree_snapshot(out)
  assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
  import orbax.checkpoint as ocp

  def failing_save(self, *args, **kwargs):
    raise OSError("disk full (simulated)")

  monkeypatch.setattr(ocp.StandardCheckpointer, "save", failing_save)
  with pytest.raises(OSError, match="simulated"):
    convert.convert(atto["hf"], out, force=True)
  assert _tree_snapshot(out) == before
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    "broken.safetensors",
    "out",
  ]  # no temp dirs left


class Payload:
  """Unpickling this would run open(path, 'w'): weights_only loading must refuse it."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (open, (self.path, "w"))


def test_pt_loading_is_weights_only(tmp_path, atto):
  marker = tmp_path / "code_ran"
  sd = {k: torch.from_numpy(v) for k, v in hf_to_official(atto["sd"]).items()}
  torch.save({"model": sd, "payload": Payload(marker)}, tmp_path / "evil.pt")
  with pytest.raises(
    formats.ConversionError, match=r"refused to unpickle.*references io\.open.*weights_only=True"
  ):
    checkpoint_files.read_state_dict(tmp_path / "evil.pt")
  assert not marker.exists()
  assert convert.main([str(tmp_path / "evil.pt"), str(tmp_path / "out")]) == 2
  assert not marker.exists() and not (tmp_path / "out").exists()
