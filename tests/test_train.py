"""train.py end to end on the built-in data: learning; one uninterrupted single-device run (the
reference) that every other layout must reproduce: eight devices resuming past damaged
checkpoints, a run stopped by SIGTERM and by Ctrl-C and resumed (by two processes in a bucket:
tests/test_gcs.py); the NaN stop and the reconstruction pictures. (A corrupt image skipped and
counted in the metrics, end to end: tests/data/test_own_data.py.)"""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import fcmae_demo
from core import logs
from fcmae import pretrain
from models import pretrained as pretrained_weights
from tests.helpers import SCAN, override
from trainer import checkpoint, loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
OVERRIDES = {
  "batch_size": 16,
  "total_steps": STEPS,
  "warmup_steps": 4,
  "log_every_steps": 1,
  "checkpoint_every_steps": 4,
  "eval_every_steps": 0,
  "optim.base_lr": 0.024,
  "data.image_size": 64,  # a 2x2 patch grid: a quarter of the demo's pixels
  **SCAN,
}
ONE_DEVICE = {"mesh.data": 1, "mesh.fsdp": 1}
# The tests that compare against `reference` (here and in tests/test_gcs.py) run on one xdist
# worker, which makes the reference run once (half a minute of compiling and training).
SHARES_THE_REFERENCE = pytest.mark.xdist_group("reference_run")


def _config(**changes):
  config = fcmae_demo.get_config()
  config.sharding.min_size = 1024  # shard even atto's small tensors over fsdp
  return override(config, {**OVERRIDES, **changes})


def _flags(**changes):
  return [f"--config.{k}={v}" for k, v in {**OVERRIDES, **changes}.items()] + [
    "--config.sharding.min_size=1024"
  ]


def _train(workdir, devices=None, **changes):
  """An in-process run; on one device unless told otherwise (8 fake devices on 2 cores are slow)."""
  if devices is None:
    devices = jax.devices()[:1]
    changes = {**ONE_DEVICE, **changes}
  config = _config(**changes)
  loop.train_and_evaluate(
    config, str(workdir), pretrain.make_task(config, str(workdir)), devices=devices
  )
  return _losses(workdir)


def _losses(workdir):
  return {r["step"]: r["loss"] for r in logs.read_metrics(str(workdir)) if "loss" in r}


def _run_train_py(workdir, *extra, env_devices=8, **popen):
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={env_devices}",
    JAX_PLATFORMS="cpu",
  )
  cmd = [
    sys.executable,
    os.path.join(REPO, "train.py"),
    "--config",
    os.path.join(REPO, "configs", "fcmae_demo.py"),
    "--workdir",
    str(workdir),
    *extra,
  ]
  return subprocess.Popen(
    cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
  )


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
  """An uninterrupted single-device run, the losses every other layout must reproduce (made once,
  on the worker that runs every test marked SHARES_THE_REFERENCE)."""
  workdir = tmp_path_factory.mktemp("reference")
  return _train(workdir, profile_steps="2:4"), workdir


def test_demo_config_learns(tmp_path):
  """The README's demo, shortened: the masked-patch loss falls clearly within 100 steps."""
  losses = _train(
    tmp_path,
    batch_size=32,
    total_steps=100,
    warmup_steps=10,
    log_every_steps=5,
    checkpoint_every_steps=100,
    **{"optim.base_lr": fcmae_demo.get_config().optim.base_lr},
  )
  first = np.mean([losses[s] for s in (5, 10, 15)])
  last = np.mean([losses[s] for s in (90, 95, 100)])
  assert last < first - 0.1, (first, last)


@SHARES_THE_REFERENCE
def test_run_writes_metrics_checkpoints_and_tensorboard(reference):
  losses, workdir = reference
  assert sorted(losses) == list(range(1, STEPS + 1))
  assert checkpoint.Checkpointer(str(workdir / "checkpoints")).all_steps() == [4, 8, 12]
  assert os.listdir(workdir / "tensorboard")
  records = logs.read_metrics(str(workdir))
  assert {
    "lr",
    "grad_norm",
    "images_per_sec",
    "epoch",
    "skipped_images",
    "tflops_per_device",
  } <= set(records[-1])
  # What the train step costs, from its compiled program, once at the start.
  compiled = records[0]
  assert compiled["step"] == 0 and compiled["compile_seconds"] > 0
  assert compiled["gflop_per_example"] > 0 and compiled["total_gib_per_device"] > 0
  # The profile of steps 2..3, for TensorBoard.
  assert any(
    name.endswith(".xplane.pb") for _, _, names in os.walk(workdir / "profile") for name in names
  )


@SHARES_THE_REFERENCE
def test_reconstruction_pictures_from_a_run(reference, tmp_path):
  from fcmae import visualize

  _, workdir = reference
  out = tmp_path / "recon.png"
  visualize.main(["--checkpoint", str(workdir), "--out", str(out)])
  picture = np.asarray(Image.open(out))
  assert picture.shape == (visualize.HEADER + 8 * 128, 4 * 128, 3)  # 64 px tiles drawn at 128
  assert picture.std() > 10  # not a blank image


def _stop_after(proc, workdir, rows, signum):
  """Sends `signum` once metrics.jsonl has `rows` loss rows; returns the output after exit."""
  metrics_file = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if metrics_file.exists() and metrics_file.read_text().count('"loss"') >= rows:
      break
    time.sleep(0.05)
  proc.send_signal(signum)
  return proc.communicate(timeout=300)[0]


@SHARES_THE_REFERENCE
def test_preemption_and_ctrl_c_save_and_the_run_resumes_exactly(reference, tmp_path):
  """SIGTERM (a preemption notice) and then Ctrl-C each stop a run (one process, the state
  sharded over its two devices) after saving a checkpoint at the next step; the same command
  again resumes it, reading its programs from the compilation cache the first run wrote, and
  ends where the uninterrupted single-device run ends. (Two processes resuming a stopped run:
  tests/test_gcs.py, in a bucket.)"""
  losses, _ = reference
  cache = tmp_path / "xla_cache"
  flags = _flags(**{"mesh.data": 1, "mesh.fsdp": 2, "compilation_cache": cache})
  out = _stop_after(_run_train_py(tmp_path, *flags, env_devices=2), tmp_path, 3, signal.SIGTERM)
  assert "preemption notice (SIGTERM); the checkpoint is saved" in out, out[-3000:]
  first = max(_losses(tmp_path))
  assert 3 <= first < STEPS
  assert checkpoint.Checkpointer(str(tmp_path / "checkpoints")).latest_step() == first
  assert f"compilation cache {cache}" in out and os.listdir(cache)  # the resumed runs read it

  out = _stop_after(
    _run_train_py(tmp_path, *flags, env_devices=2), tmp_path, first + 2, signal.SIGINT
  )
  assert f"Resumed from {tmp_path / 'checkpoints'} at step {first}" in out
  assert "interrupted (Ctrl-C); the checkpoint is saved" in out and "Traceback" not in out, out[
    -3000:
  ]
  second = max(_losses(tmp_path))
  assert first < second < STEPS
  assert checkpoint.Checkpointer(str(tmp_path / "checkpoints")).latest_step() == second

  proc = _run_train_py(tmp_path, *flags, env_devices=2)
  out = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, out[-3000:]
  assert f"Resumed from {tmp_path / 'checkpoints'} at step {second}" in out
  resumed = _losses(tmp_path)
  assert sorted(resumed) == list(range(1, STEPS + 1))  # none lost, none twice
  np.testing.assert_allclose(
    [resumed[s] for s in sorted(resumed)], [losses[s] for s in sorted(losses)], rtol=2e-4
  )


def _damage(path, how):
  """A checkpoint's step directory, damaged the ways disks and killed copies damage files."""
  state = os.path.join(path, "state")
  if how == "truncated array file":
    arrays = [
      os.path.join(root, n)
      for root, _, names in os.walk(state)
      for n in names
      if os.sep + "d" + os.sep in os.path.join(root, n)
    ]
    with open(max(arrays, key=os.path.getsize), "r+b") as f:
      f.truncate(100)
  elif how == "empty metadata":
    open(os.path.join(state, "_METADATA"), "w").close()
  elif how == "missing member":
    os.remove(os.path.join(state, "manifest.ocdbt"))


@SHARES_THE_REFERENCE
def test_damaged_checkpoints_are_set_aside_and_the_run_resumes_from_an_intact_one(
  reference, tmp_path
):
  """The newest two checkpoints of a finished single-device run are damaged: resuming on eight
  devices (data=2 x fsdp=4) moves them aside (never deletes them), restores step 4, redoes steps
  5..12 with the losses of the single-device run, and keeps one metrics row a step."""
  losses, done = reference
  workdir = tmp_path / "run"
  shutil.copytree(done, workdir)
  _damage(workdir / "checkpoints" / "12", "truncated array file")
  _damage(workdir / "checkpoints" / "8", "empty metadata")
  config = _config(**{"mesh.data": 2, "mesh.fsdp": 4})
  assert len(jax.devices()) == 8
  loop.train_and_evaluate(config, str(workdir), pretrain.make_task(config, str(workdir)))
  assert sorted(os.listdir(workdir / "checkpoints")) == [
    "12",
    "12.unreadable",
    "4",
    "8",
    "8.unreadable",
  ]
  rows = [r["step"] for r in logs.read_metrics(str(workdir)) if "loss" in r]
  assert rows == list(range(1, STEPS + 1))  # the rows of steps 5..12 were moved, then redone
  assert (workdir / "metrics.discarded.jsonl").read_text().count('"loss"') == 8
  redone = _losses(workdir)
  np.testing.assert_allclose(
    [redone[s] for s in sorted(redone)], [losses[s] for s in sorted(losses)], rtol=2e-4
  )

  for step in ("4", "8", "12"):  # now every checkpoint is unreadable: a message lists them
    _damage(workdir / "checkpoints" / step, "missing member")
  with pytest.raises(
    checkpoint.CheckpointError,
    match=r"No checkpoint .* can be restored: 12 "
    r"\(NOT_FOUND.*8 \(NOT_FOUND.*4 \(NOT_FOUND",
  ):
    loop.train_and_evaluate(config, str(workdir), pretrain.make_task(config, str(workdir)))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
  config = _config(total_steps=12, checkpoint_every_steps=4, log_every_steps=4)
  config.mesh.data = config.mesh.fsdp = 1
  task = pretrain.make_task(config, str(tmp_path))
  clean_batches, clean_loss = task.train_batches, task.loss_fn

  def poisoned_batches(start_step):  # marked from step 7 on (label -1)
    for step, batch in enumerate(clean_batches(start_step), start_step + 1):
      yield {**batch, "label": np.where(step >= 7, -1, batch["label"]).astype(np.int32)}

  def poisoned_loss(params, batch, rng):  # a NaN loss on marked batches
    loss, aux = clean_loss(params, batch, rng)
    return jnp.where(batch["label"][0] < 0, jnp.nan, loss), aux

  task.train_batches, task.loss_fn = poisoned_batches, poisoned_loss
  with pytest.raises(loop.NonFiniteLossError, match="last good checkpoint is step 4"):
    loop.train_and_evaluate(config, str(tmp_path), task, devices=jax.devices()[:1])
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.all_steps() == [4]
  params = pretrained_weights.restore_train_params(str(tmp_path))
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))
