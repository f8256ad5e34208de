"""The storage benchmarks run at their smallest size against the test emulator, so that a broken
one fails here. No figure is asserted: the scripts print them."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  done = subprocess.run(
    [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )
  assert done.returncode == 0, f"{args}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
  return done.stdout


def test_checkpoint_benchmark_reads_its_config_as_train_py(gcs):
  out = _run(
    [
      "benchmarks.gcs_checkpoint",
      "--config",
      "configs/fcmae_demo.py",
      "--config.fcmae.decoder_dim=32",
      "--gcs",
      gcs.url("bench"),
    ]
  )
  assert "local disk" in out and "gs://" in out


def test_metrics_log_benchmark(gcs):
  args = ["--where", gcs.url("bench"), "--rows", "20", "--rewrite_rows", "20"]
  lines = _run(["benchmarks.metrics_log", *args]).splitlines()
  assert [line.split(":")[0].split() for line in lines] == [
    ["append", "(compose)", "20", "rows"],
    ["rewrite", "whole", "20", "rows"],
  ]
