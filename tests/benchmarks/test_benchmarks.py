"""Every benchmark script runs, at the smallest size for a step or two, so that a broken one fails
here and not on the machine it was written for. No figure is asserted: the scripts print them."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# One CPU device (the suite forces eight in its own process): the smallest run of each script.
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
ENV.update(JAX_PLATFORMS="cpu", PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="2")


def _run(cmd, timeout=600):
  done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
  assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
  return done.stdout


def _imports(module: str) -> bool:
  return (
    subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0
  )


def test_gpu_script_dry_run_checks_every_line(tmp_path):
  out = tmp_path / "gpu.jsonl"
  text = _run(["bash", "benchmarks/gpu.sh", "--dry-run", str(out)])
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  configs = [r["config"] for r in rows]
  assert configs == [
    "configs/fcmae_base.py",
    "torch fcmae atto",
    "configs/finetune_base.py",
    "torch finetune atto",
  ], configs
  ran, peer_fcmae, traced, peer_finetune = rows
  assert ran["images_per_sec"] > 0 and math.isfinite(ran["final_loss"])
  assert traced["traced_only"] and traced["gflop_per_example"] > 0
  for peer in rows[1::2]:  # the PyTorch peer runs where timm imports (the GPU machines)
    if _imports("timm"):
      assert math.isfinite(peer["final_loss"]) and peer["images_per_sec"] > 0, peer
    else:
      assert peer["skipped"] == "timm does not import", peer
  assert "| ours / PyTorch |" in text


@pytest.mark.parametrize(
  "args",
  [
    ["benchmarks.depthwise", "--batch", "1", "--reps", "1"],
    [
      "benchmarks.fcmae_step",
      "--variants",
      "atto",
      "--batch",
      "2",
      "--image-size",
      "64",
      "--reps",
      "1",
    ],
    [
      "benchmarks.model_speed",
      "--variants",
      "atto",
      "--batch",
      "1",
      "--image-size",
      "64",
      "--rounds",
      "1",
      "--reps",
      "1",
    ],
    ["benchmarks.folder_listing", "--files", "200"],
  ],
  ids=lambda args: args[0],
)
def test_benchmark_runs_at_the_smallest_size(args):
  assert _run([sys.executable, "-m", *args]).strip()


def test_where_it_fits_finds_the_smallest_slice(tmp_path):
  out = tmp_path / "fits.jsonl"
  extra = ["--config.data.image_size=64", "--config.batch_size=8", "--config.model.scan=true"]
  _run(
    [
      sys.executable,
      "-m",
      "benchmarks.where_it_fits",
      "--configs",
      "fcmae_atto",
      "--generations",
      "v5e",
      "--out",
      str(out),
      "--",
      *extra,
    ]
  )
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert rows[-1]["fits"] and rows[-1]["topology"] == "v5e:2x2", rows


def test_input_pipeline_benchmark_per_op_and_one_contender(tmp_path):
  from benchmarks import input_pipeline

  photos = tmp_path / "photos"
  input_pipeline.make_photos(str(photos), per_class=2)
  data = f"folder:{photos}"
  out = _run([sys.executable, "-m", "benchmarks.input_pipeline", "--data", data, "--per-op"])
  for step in ("data.resample.resize_bicubic", "Sharpness", "TranslateYRel", "RandAugment (2"):
    assert step in out, out
  small = ["--batch", "4", "--batches", "2", "--warmup", "1"]
  for augment in ("finetune", "eval"):
    out = _run(
      [sys.executable, "-m", "benchmarks.input_pipeline", "--data", data, "--augment", augment]
      + small
    )
    assert "image uint8 (4, 224, 224, 3)" in out and "img/s: " in out, out
