"""core/sharding.py: the mesh, the FSDP rule on real parameter trees, and global batches."""

import jax
import numpy as np

from configs import fcmae_demo
from core import sharding
from data import pipeline
from fcmae import pretrain
from trainer import loop


def test_params_are_really_sharded_over_fsdp():
  config = fcmae_demo.get_config()
  config.batch_size = 16
  config.sharding.min_size = 1024  # shard even atto's small tensors over fsdp
  config.mesh.data, config.mesh.fsdp = 2, 4
  task = pretrain.make_task(config, "/tmp/unused")
  run = loop.setup(config, task)
  kernel = run.state_shardings["params"]["encoder"]["stage2"]["blocks"]["pwconv1"]["kernel"]
  assert kernel.spec == jax.sharding.PartitionSpec(None, None, "fsdp")  # never the block axis
  mu = run.state_shardings["opt_state"]
  assert any("fsdp" in str(s.spec) for s in jax.tree.leaves(mu))


def test_make_global_batch():
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  devices = np.array(jax.devices())
  batch_sharding = NamedSharding(Mesh(devices, ("data",)), P("data"))
  batch = next(
    pipeline.train_iterator("demo", image_size=32, local_batch_size=2 * len(devices), seed=0)
  )
  global_batch = sharding.make_global_batch(batch, batch_sharding)
  assert global_batch["image"].shape == batch["image"].shape
  assert global_batch["image"].sharding == batch_sharding
  np.testing.assert_array_equal(np.asarray(global_batch["label"]), batch["label"])
