"""Saving and restoring a whole train state to a local disk and to gs://, the same run, side by
side: the checkpoint a workdir's checkpoints/ holds (params, AdamW state, EMA).

    python -m benchmarks.gcs_checkpoint --config configs/fcmae_base.py --gcs gs://bucket/bench

The config and its `--config.FIELD=VALUE` overrides are read as train.py reads them
(trainer/cli.py: read_config).

With STORAGE_EMULATOR_HOST set, gs:// is that emulator; without it, Cloud Storage itself (the
host's credentials). The state is random normal numbers of the config's shapes (zeros would
compress), on one device; each save is waited for. Prints seconds and MB/s per place.
"""

from __future__ import annotations

import tempfile
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from core import errors, storage
from core import task as task_lib
from fcmae import model as fcmae_model
from trainer import checkpoint, cli, loop

FLAGS = flags.FLAGS
cli.define_config_flag("Pretraining config file (configs/fcmae_*.py).")
flags.DEFINE_string("gcs", None, "gs://BUCKET/PATH to write under.", required=True)
flags.DEFINE_string("local", None, "Local directory (default: a temporary one).")


def abstract_state(config):
  """The train state's shapes of a pretraining config, placed on one device (no data read)."""
  task = task_lib.Task(
    fresh_params=lambda: fcmae_model.from_config(config)[1],
    loss_fn=None,
    train_batches=None,
    steps_per_epoch=1000,
  )
  config.mesh.data = config.mesh.fsdp = 1
  return loop.setup(config, task, devices=jax.devices()[:1]).abstract_state


def timed(directory, state, abstract) -> tuple[float, float]:
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  start = time.perf_counter()
  ckpt.save(1, state)
  ckpt.wait()
  saved = time.perf_counter() - start
  start = time.perf_counter()
  restored = ckpt.restore(abstract, 1)
  jax.block_until_ready(restored)
  loaded = time.perf_counter() - start
  ckpt.close()
  return saved, loaded


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax's lines per save
  config = cli.read_config(FLAGS)
  storage.check_location(FLAGS.gcs, "--gcs")
  abstract = abstract_state(config)
  rng = np.random.default_rng(0)
  state = jax.tree.map(
    lambda a: jax.device_put(rng.standard_normal(a.shape, np.float32).astype(a.dtype), a.sharding),
    abstract,
  )
  megabytes = sum(x.nbytes for x in jax.tree.leaves(state)) / 1e6
  print(f"{config_flags.get_config_filename(FLAGS['config'])}: train state {megabytes:.0f} MB")
  local = FLAGS.local or tempfile.mkdtemp(prefix="ckpt-bench-")
  where = f"{FLAGS.gcs}/{int(time.time())}"
  for name, directory in (("local disk", local), ("gs://", where)):
    saved, loaded = timed(f"{directory}/checkpoints", state, abstract)
    print(
      f"{name:10s} save {saved:6.1f} s ({megabytes / saved:5.0f} MB/s), "
      f"restore {loaded:6.1f} s ({megabytes / loaded:5.0f} MB/s)"
    )
  storage.rmtree(where)
  storage.rmtree(local)


if __name__ == "__main__":
  app.run(errors.guarded(main), flags_parser=cli.parse_flags)
