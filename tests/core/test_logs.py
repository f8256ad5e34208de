"""core/logs.py: metrics.jsonl rows, TensorBoard events (read back with TensorBoard's own
reader), the progress line, locally and in a bucket (the GCS emulator)."""

import json
import os

import numpy as np
import pytest
from skimage import data as photos
from tensorboard.backend.event_processing import event_accumulator

from core import logs, storage


@pytest.fixture(params=["local", "gs"])
def workdir(request, tmp_path):
  if request.param == "local":
    return str(tmp_path / "run")
  return request.getfixturevalue("gcs").url("logs")


def _events(directory: str) -> event_accumulator.EventAccumulator:
  """What TensorBoard shows of the event files under `directory` (downloaded from a bucket)."""
  with storage.downloaded(directory) as local:
    names = [n for n in os.listdir(local) if "tfevents" in n]
    assert names, os.listdir(local)
    acc = event_accumulator.EventAccumulator(local, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
  return acc


def test_rows_and_scalars_are_stored_before_the_progress_line(workdir, capsys):
  writer = logs.MetricWriter(workdir, 10, shown=logs.SHOWN + ("top1",), enabled=True)
  writer.write(0, {"compile_seconds": 1.5}, progress=False)
  for step in (1, 2):
    writer.write(step, {"loss": 1.0 / step, "lr": np.float32(0.5), "knn_top1": 3})
    rows = logs.read_metrics(workdir)  # before close: in the file (bucket) already
    assert rows[-1]["step"] == step and rows[-1]["lr"] == 0.5
  writer.write(2, {"top1": 42.0, "nan": float("nan")})
  writer.close()
  assert [r["step"] for r in logs.read_metrics(workdir)] == [0, 1, 2, 2]
  assert logs.read_metrics(workdir)[-1]["nan"] == "nan"
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 3 and "step 1/10, loss 1, lr 0.5" in lines[0]
  assert "knn_top1" not in lines[0]  # a name the caller did not ask to show
  assert "top1 42" in lines[2]
  acc = _events(f"{workdir}/tensorboard")
  assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 0.5)]
  assert [e.step for e in acc.Scalars("compile_seconds")] == [0]
  assert [e.value for e in acc.Scalars("top1")] == [42.0]


def test_a_resumed_writer_appends_and_tensorboard_reads_every_file(workdir):
  for steps in ((1, 2), (3,)):
    writer = logs.MetricWriter(workdir, 3, enabled=True)
    for step in steps:
      writer.write(step, {"loss": float(step)}, progress=False)
    writer.close()
  assert [r["loss"] for r in logs.read_metrics(workdir)] == [1.0, 2.0, 3.0]
  assert len([n for n in storage.listdir(f"{workdir}/tensorboard") if "tfevents" in n]) == 2
  assert [e.step for e in _events(f"{workdir}/tensorboard").Scalars("loss")] == [1, 2, 3]


def test_an_image_reaches_tensorboard_as_it_was(workdir):
  picture = photos.astronaut()[::8, ::8]  # uint8 (64, 64, 3)
  writer = logs.EventWriter(f"{workdir}/tensorboard")
  writer.image(7, "reconstructions", picture)
  writer.close()
  (event,) = _events(f"{workdir}/tensorboard").Images("reconstructions")
  assert event.step == 7 and (event.height, event.width) == picture.shape[:2]
  import io

  from PIL import Image

  assert np.array_equal(np.asarray(Image.open(io.BytesIO(event.encoded_image_string))), picture)


def test_other_processes_write_nothing(tmp_path, capsys):
  writer = logs.MetricWriter(str(tmp_path / "run"), 5, enabled=False)
  writer.write(1, {"loss": 1.0})
  writer.close()
  assert not (tmp_path / "run").exists() and not capsys.readouterr().out


def test_metrics_rows_are_json_lines(tmp_path):
  writer = logs.MetricWriter(str(tmp_path), 5, enabled=True)
  writer.write(1, {"loss": np.float64(0.25), "name": "x"}, progress=False)
  writer.close()
  assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
    "step": 1,
    "loss": 0.25,
    "name": "x",
  }
