"""trainer/compile_only.py: the pretraining config of Atto compiled for a real TPU slice on this
machine (TPU runtime installed: CI installs it), and finetuning for an 8-GPU H100 node (where JAX's
CUDA plugin is installed: requirements-gpu-compile.txt, not in CI), each checked against what the
model's structure says it must cost."""

import importlib.util
import io
import json

import pytest

from classify import task as finetune_task
from configs import fcmae_atto, finetune_atto
from fcmae import masking, pretrain
from models import convnextv2
from trainer import compile_only


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:
    return False


def _compile(config, make_task, topology):
  out = io.StringIO()
  status = compile_only.compile_and_report(config, make_task, topology, out=out)
  return status, json.loads(out.getvalue().strip().splitlines()[-1]), out.getvalue()


def _block_macs(dim: int, positions: int) -> int:
  """One ConvNeXt V2 block, counted as docs/reference.md section 1 counts them."""
  return positions * (49 * dim + 5 * dim + 2 * dim * 4 * dim)


@pytest.mark.skipif(
  not _installed("libtpu"), reason="needs the TPU runtime: pip install -r requirements-tpu.txt"
)
def test_atto_pretraining_compiles_for_a_v5e_slice_fits_and_costs_what_its_structure_says():
  config = fcmae_atto.get_config()
  config.batch_size = (
    256  # 64 per chip: the compile takes as long as at 4096, the check is the same
  )
  config.model.scan = True  # as Large and Huge run; the compile is a quarter shorter
  # 128 px, a 4x4 patch grid (6 of 16 patches visible, the paper's 7x7 grid keeps 19 of 49):
  # the TPU compile takes 0.42x the time of 224 px and the FLOPs check below holds as closely
  # (counted / expected 1.044 at 128, 1.042 at 224; at 64 px, one patch of 4, it does not).
  config.data.image_size = 128
  status, result, text = _compile(config, pretrain.make_task, "v5e:2x2")
  assert status == 0 and result["fits"] is True, text
  assert (result["num_devices"], result["device_kind"], result["per_device_batch"]) == (
    4,
    "TPU v5 lite",
    64,
  )
  assert result["depthwise_impl"] == "xla" and result["hbm_gib_per_device"] == 16.0
  assert 0 < result["total_gib_per_device"] < 0.9 * 16
  # Forward + backward = 3x the forward MACs, 2 FLOPs each. The encoder runs on the visible
  # patches only (6 of 16); the decoder (1x1 proj to 512, one block, 1x1 to 3072 pixels) on all.
  grid = masking.grid_shape(128)
  patches = grid[0] * grid[1]
  visible = masking.len_keep(patches, 0.6) / patches
  encoder = convnextv2.gmacs("atto", 128, num_classes=0) * 1e9
  decoder = patches * (320 * 512 + 512 * 3072) + _block_macs(512, patches)
  expected = 2 * 3 * (encoder * visible + decoder) / 1e9
  assert result["gflop_per_example"] == pytest.approx(expected, rel=0.10)


@pytest.mark.skipif(
  not _installed("jax_plugins.xla_cuda12"),
  reason="needs JAX's CUDA plugin: pip install -r requirements-gpu-compile.txt",
)
def test_atto_finetuning_compiles_for_an_h100_node_with_its_eval_step():
  config = finetune_atto.get_config()
  config.model.scan = True
  status, result, text = _compile(config, finetune_task.make_task, "h100:8")
  assert status == 0 and result["fits"] is True, text
  assert (result["num_devices"], result["per_device_batch"]) == (8, 1024 / 8)
  assert "H100" in result["device_kind"] and result["flops_source"] == "jaxpr"
  assert result["eval_compile_seconds"] > 0
  expected = 2 * 3 * convnextv2.gmacs("atto", 224, num_classes=1000)
  assert result["gflop_per_example"] == pytest.approx(expected, rel=0.10)
