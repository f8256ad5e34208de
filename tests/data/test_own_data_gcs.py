"""An unlabeled folder in a bucket (the local GCS emulator, tests/gcs_emulator.py): listed once
into the workdir's file list, read through the storage layer into the very batches the same
local folder gives, pretrained on, and its list kept in a gs:// workdir."""

import os

import jax
import numpy as np

from configs import fcmae_demo
from core import logs, storage
from data import folders, pipeline, prepare
from fcmae import pretrain
from tests.data.helpers import make_unlabeled_folder
from tests.helpers import SCAN, override
from trainer import loop


def _upload(local, prefix):
  for dirpath, _, names in os.walk(local):
    for name in names:
      path = os.path.join(dirpath, name)
      storage.write_bytes(f"{prefix}/{os.path.relpath(path, local)}", open(path, "rb").read())


def test_a_folder_in_a_bucket_reads_as_the_local_folder_and_pretrains(gcs, tmp_path, capsys):
  local = tmp_path / "photos"
  files = make_unlabeled_folder(local)
  bucket = gcs.url("photos")
  _upload(local, bucket)
  assert folders.scan(bucket) == files  # .DS_Store, notes.txt and .cache/ left out

  kwargs = dict(image_size=64, local_batch_size=2, seed=0, augment="pretrain")
  ours = pipeline.train_iterator(f"folder:{bucket}", **kwargs)
  reference = pipeline.train_iterator(f"folder:{local}", **kwargs)
  for _ in range(4):  # one epoch, the corrupt file's slot included
    np.testing.assert_array_equal(next(ours)["image"], next(reference)["image"])
  assert ours.num_skipped == 1

  workdir = str(tmp_path / "run")  # the data in the bucket; the run's files here (fast)
  config = override(
    fcmae_demo.get_config(),
    {
      "data.name": f"folder:{bucket}",
      "batch_size": 2,
      "total_steps": 2,
      "warmup_steps": 1,
      "log_every_steps": 1,
      "checkpoint_every_steps": 2,
      "eval_every_steps": 0,
      "data.image_size": 64,
      "mesh.data": 1,
      "mesh.fsdp": 1,
      **SCAN,
    },
  )
  loop.train_and_evaluate(
    config, workdir, pretrain.make_task(config, workdir), devices=jax.devices()[:1]
  )
  assert f"Data: {len(files)} images under folder:{bucket}" in capsys.readouterr().out
  assert sorted(r["step"] for r in logs.read_metrics(workdir) if "loss" in r) == [1, 2]

  # A gs:// workdir keeps the list too; a resume (or another host) reads it from there, not
  # from the bucket: a file added since is not trained on.
  workdir = gcs.url("run")
  prepare.prepare(config, workdir)
  assert storage.read_text(f"{workdir}/{folders.LIST_NAME}").split() == files
  storage.write_bytes(f"{bucket}/z/added.jpg", (local / "astronaut.jpg").read_bytes())
  assert len(folders.scan(bucket)) == len(files) + 1
  capsys.readouterr()
  again = prepare.prepare(config, workdir)
  assert again.info.num_train_examples == len(files)
  assert f"from {workdir}/{folders.LIST_NAME}" in capsys.readouterr().out
