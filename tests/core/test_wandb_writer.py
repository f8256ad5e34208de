"""core/wandb_writer.py: a demo pretraining run with --config.log.wandb writes an offline W&B run
(read back from its .wandb files), a resumed run goes on in the same W&B run, and a config that
asks for W&B without wandb installed stops at start in one line."""

import json
import os
import struct
import subprocess
import sys

import jax
import pytest
from PIL import Image

from configs import fcmae_demo
from core import logs, storage, wandb_writer
from fcmae import pretrain
from tests.helpers import SCAN, override
from trainer import loop

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERRIDES = {  # tests/test_train.py's smallest run, with the pictures at step 2 and no monitors
  "batch_size": 16,
  "warmup_steps": 1,
  "log_every_steps": 1,
  "checkpoint_every_steps": 2,
  "eval_every_steps": 2,
  "probe.enabled": False,
  "data.image_size": 64,
  "mesh.data": 1,
  "mesh.fsdp": 1,
  "log.wandb": "P",
  "log.wandb_name": "demo",
  **SCAN,
}


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
  """W&B offline (no network), its files in tmp_path/wandb; its process-wide settings (read from
  the environment once) dropped after each test."""
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_DIR", str(tmp_path))
  monkeypatch.setenv("WANDB_SILENT", "true")
  yield
  wandb.teardown()


def _train(workdir: str, total_steps: int) -> None:
  config = override(fcmae_demo.get_config(), {**OVERRIDES, "total_steps": total_steps})
  task = pretrain.make_task(config, workdir)
  loop.train_and_evaluate(config, workdir, task, devices=jax.devices()[:1])


def _records(path: str) -> list:
  """The records of a .wandb file: W&B's LevelDB-style log (a 7-byte header ':W&B', magic and
  version; 32 KiB blocks of chunks with a 7-byte header: CRC32, length, type full / first /
  middle / last), each record a wandb_internal_pb2.Record."""
  data = open(path, "rb").read()
  assert data[:4] == b":W&B"
  pos, out, part = 7, [], b""
  while pos + 7 <= len(data):
    left = 32768 - pos % 32768
    if left < 7:  # a block's tail too short for a chunk header is padding
      pos += left
      continue
    _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
    if kind == 0:  # zero fill
      pos += left
      continue
    part += data[pos + 7 : pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):  # full, last
      record = wandb_internal_pb2.Record()
      record.ParseFromString(part)
      out.append(record)
      part = b""
  return out


def _offline_run(directory: str) -> dict:
  """What one offline run directory holds: its id, config, history rows and summary."""
  (name,) = [n for n in os.listdir(directory) if n.endswith(".wandb")]
  run = {"history": [], "summary": {}, "config": {}}
  for record in _records(os.path.join(directory, name)):
    kind = record.WhichOneof("record_type")
    if kind == "run":
      run["id"], run["project"] = record.run.run_id, record.run.project
      run["config"].update(_items(record.run.config.update))
    elif kind == "history":
      run["history"].append(_items(record.history.item))
    elif kind == "summary":
      run["summary"].update(_items(record.summary.update))
  return run


def _picture(row: dict) -> bool:
  return "reconstructions/path" in row


def _items(items) -> dict:
  """{key: value} of W&B's items (a key, or a nested key: 'reconstructions/path')."""
  return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def test_a_demo_run_and_its_resume_write_one_offline_wandb_run(tmp_path):
  workdir = str(tmp_path / "run")
  _train(workdir, 2)
  run_id = open(os.path.join(workdir, wandb_writer.RUN_ID_FILE)).read().strip()
  _train(workdir, 4)  # resumed at step 2: the same W&B run goes on
  assert open(os.path.join(workdir, wandb_writer.RUN_ID_FILE)).read().strip() == run_id

  base = tmp_path / "wandb"
  dirs = sorted(str(base / n) for n in os.listdir(base) if n.startswith("offline-run-"))
  assert len(dirs) == 2, dirs  # one per start, both of the same run
  first, second = (_offline_run(d) for d in dirs)
  assert first["id"] == second["id"] == run_id and first["project"] == "P"
  assert first["config"]["log"]["wandb"] == "P" and first["config"]["batch_size"] == 16

  losses = {r["step"]: r["loss"] for r in logs.read_metrics(workdir) if "loss" in r}
  logged = {
    row["step"]: row["loss"] for run in (first, second) for row in run["history"] if "loss" in row
  }
  assert logged == pytest.approx(losses) and sorted(logged) == [1, 2, 3, 4]
  pictures = [
    (d, r) for d, run in zip(dirs, (first, second)) for r in run["history"] if _picture(r)
  ]
  assert [r["step"] for _, r in pictures] == [2, 4]
  for d, r in pictures:  # the PNG the row names, as fcmae/visualize.py drew it
    assert r["reconstructions/_type"] == "image-file"
    with Image.open(os.path.join(d, "files", r["reconstructions/path"])) as png:
      assert png.size == (r["reconstructions/width"], r["reconstructions/height"])
  for run in (first, second):  # the cost report is the run's summary, not a history row
    assert run["summary"]["compile_seconds"] > 0 and run["summary"]["gflop_per_example"] > 0
    assert not any("compile_seconds" in r for r in run["history"])
  row = next(r for r in second["history"] if r.get("step") == 4 and "loss" in r)
  assert {"lr", "grad_norm", "images_per_sec"} <= set(row)


def test_the_run_id_of_a_bucket_workdir_is_kept_in_the_bucket(gcs, tmp_path):
  workdir = gcs.url("runs/w")
  ids = []
  for step in (1, 2):  # a start and a resume
    run = wandb_writer.open_run(workdir, "P", config={"seed": 0})
    run.scalars(step, {"loss": 1.0 / step, "skipped": True, "note": "text"})
    run.close()
    ids.append(run.id)
  assert ids[0] == ids[1] == storage.read_text(f"{workdir}/{wandb_writer.RUN_ID_FILE}").strip()
  base = tmp_path / "wandb"
  dirs = sorted(str(base / n) for n in os.listdir(base) if n.startswith("offline-run-"))
  rows = [r for d in dirs for r in _offline_run(d)["history"]]
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 0.5)]
  assert not any("skipped" in r or "note" in r for r in rows)  # numbers only


def test_without_wandb_a_config_asking_for_it_stops_at_start_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  argv = ["train.py", "--config", "configs/fcmae_demo.py", "--workdir", str(workdir)]
  code = (
    "import runpy, sys; sys.modules['wandb'] = None; "  # `import wandb` raises ImportError
    f"sys.argv = {argv + ['--config.log.wandb=P']!r}; runpy.run_path('train.py', run_name='__main__')"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and wandb_writer.INSTALL in lines[0] and "log.wandb='P'" in lines[0]
  assert result.stdout == "" and not workdir.exists()  # nothing started, nothing written
