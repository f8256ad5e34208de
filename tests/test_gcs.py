"""gs:// workdirs end to end against a local GCS emulator (tests/conftest.py: gcs): pretraining
into a bucket stopped by SIGTERM and resumed exactly, a damaged checkpoint in the bucket set
aside, a config change refused, a bucket that refuses writes, and weights read from the bucket
(finetuning's init_from, the probe, the reconstruction pictures). The resumed run is two
processes sharing the workdir. The bucket run's bucket is busy: it refuses one request in twelve
(tests/gcs_emulator.py FaultProxy: 503, 429, an answer lost after the write was done), which
the client libraries' retries must ride out with the losses of the local run, exactly.

The runs use test_train.py's configs, so their programs come from the session's compilation
cache. The tests share one bucket run (a session fixture), one scenario each so that a failure
names it; xdist_group keeps them on one worker, which makes the run once (tests/conftest.py),
beside test_train.py's tests of the same reference run, which that worker makes once too."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import fsspec
import jax
import numpy as np
import pytest
from absl.testing import flagsaver

from core import errors, logs, storage
from fcmae import pretrain, probe, visualize
from models import pretrained as pretrained_weights
from tests import test_train
from tests.gcs_emulator import FaultProxy
from tests.helpers import finetune_config, free_port
from tests.test_train import ONE_DEVICE, REPO, STEPS, _config, _flags
from trainer import checkpoint, cli, loop

pytestmark = test_train.SHARES_THE_REFERENCE

reference = test_train.reference  # the uninterrupted local run every bucket run must match
# Reconstructions at the last step (the monitors' probes off: they would compile more).
EVAL = {"eval_every_steps": STEPS, "probe.enabled": False}
# Tensorstore's retries of the busy bucket's refusals, without its default backoff (1 s, doubling).
QUICK_RETRIES = {"storage.retry_delay": 0.01, "storage.retry_max_delay": 0.1}


def _losses(workdir):
  return {r["step"]: r["loss"] for r in logs.read_metrics(workdir) if "loss" in r}


def _train_py(workdir, cwd, *extra, devices=2, bucket=None):
  """train.py on the demo config in a subprocess; `bucket`: the URL its GCS requests go to (by
  default the emulator's)."""
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=REPO,
  )
  if bucket:
    env.update(STORAGE_EMULATOR_HOST=bucket, TENSORSTORE_GCS_HTTP_URL=bucket)
  if any(a.startswith("--num_processes") for a in extra):
    # A multi-process CPU program read back from the persistent cache crashed its second run
    # (2026-12-05): the processes get an empty one.
    env["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax-cache-")
  return subprocess.Popen(
    [sys.executable, os.path.join(REPO, "train.py"), "--config"]
    + [os.path.join(REPO, "configs", "fcmae_demo.py"), "--workdir", workdir, *extra],
    cwd=cwd,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _sigterm_after(proc, workdir, rows):
  """SIGTERM once the bucket's metrics.jsonl has `rows` loss rows; the output after exit."""
  deadline = time.time() + 300
  metrics = f"{workdir}/metrics.jsonl"
  while time.time() < deadline and proc.poll() is None:
    if storage.exists(metrics) and storage.read_text(metrics).count('"loss"') >= rows:
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  return proc.communicate(timeout=300)[0]


def _objects(prefix):
  """{name: bytes} of every object under a gs:// prefix but the checkpoints' arrays; their
  names."""
  return {
    name: b"" if "/d/" in name else storage.read_bytes(f"{prefix}/{name}")
    for name in storage.files(prefix)
  }


@pytest.fixture(scope="session")
def bucket_run(gcs, tmp_path_factory):
  """The demo pretraining in gs://bucket/run-*, run from an empty directory through a bucket
  that refuses one request in twelve: stopped by SIGTERM, then resumed to the end by two processes
  sharing the workdir (data=2 x fsdp=2 over their four devices). (workdir, outputs of the first
  run and of both processes of the second, that directory, the refusals by kind.) The tests
  read the bucket directly."""
  workdir = gcs.url("run")
  cwd = tmp_path_factory.mktemp("cwd")
  busy = FaultProxy(gcs.host, every=12)
  flags = {**EVAL, **QUICK_RETRIES}
  try:
    first, outputs, procs = _sigterm_and_resume(workdir, cwd, flags, busy.url)
  finally:
    busy.close()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return workdir, first, outputs, cwd, busy.faults


def _sigterm_and_resume(workdir, cwd, flags, bucket):
  """One process (its two devices: data=2) stopped by SIGTERM; two processes of two devices each
  (data=2 x fsdp=2: the batch and the parameters both cross processes) resume it."""
  one = _flags(**{"mesh.data": 2, "mesh.fsdp": 1, **flags})
  first = _sigterm_after(_train_py(workdir, cwd, *one, bucket=bucket), workdir, 3)
  port = free_port()
  procs = [
    _train_py(
      workdir,
      cwd,
      *_flags(**{"mesh.data": 2, "mesh.fsdp": 2, **flags}),
      f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2",
      f"--process_id={i}",
      devices=2,
      bucket=bucket,
    )
    for i in range(2)
  ]
  return first, [p.communicate(timeout=600)[0] for p in procs], procs


def test_sigterm_and_two_processes_resume_exactly(bucket_run, reference):
  workdir, first, (second, _), cwd, faults = bucket_run
  assert "preemption notice (SIGTERM); the checkpoint is saved" in first, first[-3000:]
  assert f"Resumed from {workdir}/checkpoints at step" in second, second[-3000:]
  assert "4 devices over 2 processes" in second, second[-3000:]
  assert all(faults[kind] for kind in FaultProxy.KINDS), faults  # the bucket was busy
  said = [line for line in (first + second).splitlines() if "] Storage: " in line]
  assert said and all("request(s) retried since the last row" in line for line in said), said
  assert any("checkpoint arrays (tensorstore) x" in line for line in said), said
  losses, _ = reference
  resumed = _losses(workdir)
  assert sorted(resumed) == list(range(1, STEPS + 1))  # none lost, none twice
  np.testing.assert_allclose(
    [resumed[s] for s in sorted(resumed)], [losses[s] for s in sorted(losses)], rtol=2e-4
  )
  steps = checkpoint.Checkpointer(f"{workdir}/checkpoints").all_steps()
  assert len(steps) == 3 and steps[-2:] == [8, 12]  # the one saved on SIGTERM, maybe
  names = _objects(workdir)
  assert "config.json" in names and "reconstructions/step_0000012.png" in names
  assert any(n.startswith("tensorboard/events.out.tfevents.") for n in names)
  assert os.listdir(cwd) == []  # nothing on the local disk


def test_a_damaged_checkpoint_is_set_aside_and_the_one_before_restored(bucket_run, reference, gcs):
  done = bucket_run[0]
  workdir = gcs.url("damaged")
  for name in storage.files(done):  # epath copies no directories: object by object
    storage.write_bytes(f"{workdir}/{name}", storage.read_bytes(f"{done}/{name}"))
  storage.path(f"{workdir}/checkpoints/12/state/manifest.ocdbt").unlink()  # a missing member
  config = _config(**ONE_DEVICE, **EVAL)
  loop.train_and_evaluate(
    config, workdir, pretrain.make_task(config, workdir), devices=jax.devices()[:1]
  )
  kept = storage.listdir(f"{done}/checkpoints")  # 12, 8 and 4 (or the step SIGTERM saved)
  assert sorted(storage.listdir(f"{workdir}/checkpoints")) == sorted(kept + ["12.unreadable"])
  losses, _ = reference
  redone = _losses(workdir)
  assert sorted(redone) == list(range(1, STEPS + 1))
  np.testing.assert_allclose(
    [redone[s] for s in sorted(redone)], [losses[s] for s in sorted(losses)], rtol=2e-4
  )
  discarded = storage.read_text(f"{workdir}/metrics.discarded.jsonl")
  assert [json.loads(r)["step"] for r in discarded.splitlines() if '"loss"' in r] == [9, 10, 11, 12]


def test_a_config_change_is_refused_and_the_bucket_keeps_what_it_had(bucket_run, tmp_path):
  workdir = bucket_run[0]
  before = _objects(workdir)
  config_json = storage.read_text(f"{workdir}/config.json")
  proc = _train_py(workdir, tmp_path, *_flags(**{"model.variant": "femto"}))
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 2, out[-3000:]
  assert f"error: {workdir} was trained with another config" in out
  assert "model.variant: 'atto' -> 'femto'" in out and "Traceback" not in out
  assert _objects(workdir) == before
  assert storage.read_text(f"{workdir}/config.json") == config_json


def test_weights_in_a_bucket_for_finetuning_the_probe_and_the_pictures(bucket_run, gcs, tmp_path):
  workdir = bucket_run[0]
  params = pretrained_weights.read_params(workdir)
  from classify import task as finetune_task

  config = finetune_config(init_from=workdir)
  task = finetune_task.make_task(config, str(tmp_path / "ft"))
  loaded = task.load_pretrained(jax.jit(task.fresh_params)())
  for a, b in zip(jax.tree.leaves(loaded["stage2"]), jax.tree.leaves(params["encoder"]["stage2"])):
    np.testing.assert_array_equal(a, b)

  args = ["--data", "demo", "--image_size", "64", "--train_examples", "240", "--batch_size", "64"]
  result = probe.main(["--checkpoint", workdir, *args])
  assert result["num_examples"] == 240 and 0 <= result["knn_top1"] <= 100

  out = f"{gcs.url('pictures')}/r.png"  # not into the run's workdir, which the others compare
  visualize.main(["--checkpoint", f"{workdir}/checkpoints/12", "--out", out])
  assert storage.read_bytes(out).startswith(b"\x89PNG")


def test_a_bucket_that_refuses_writes_stops_the_run_with_one_line(
  bucket_run, gcs, capsys, monkeypatch
):
  """train.py's main, in this process, resuming the bucket run's workdir (on this process's
  devices: a change of the layout, so config.json's history is written first) through a bucket
  that answers every write 403: exit status 2, one line naming the write and what to grant,
  and the bucket as it was."""
  import train  # its flags: defined in this process only by the test that needs them

  workdir = bucket_run[0]
  before = _objects(workdir)
  refusing = FaultProxy(gcs.host, every=0)
  refusing.refuse_writes = True
  argv = ["train.py", "--config", os.path.join(REPO, "configs", "fcmae_demo.py")]
  argv += ["--workdir", workdir, *_flags(**{"mesh.data": -1, "mesh.fsdp": 1, **EVAL})]
  monkeypatch.setattr(sys, "argv", argv)  # where ml_collections reads the --config.* overrides
  for name in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL"):
    monkeypatch.setenv(name, refusing.url)
  fsspec.get_filesystem_class("gs").clear_instance_cache()  # a gcsfs client for the proxy
  try:
    with flagsaver.flagsaver(), pytest.raises(SystemExit) as stop:
      errors.guarded(train.main)(cli.parse_flags(argv))
  finally:
    monkeypatch.undo()
    fsspec.get_filesystem_class("gs").clear_instance_cache()
    refusing.close()
  err = capsys.readouterr().err
  assert stop.value.code == 2, err[-3000:]
  assert refusing.faults["403"] and "Traceback" not in err, err[-3000:]
  line = err.strip().splitlines()[-1]
  assert line.startswith(f"error: writing {workdir}/config.12.json: permission denied"), line
  assert "roles/storage.objectAdmin" in line
  assert _objects(workdir) == before  # checkpoints 4 (or SIGTERM's), 8 and 12 as they were
