"""Per-device memory of a compiled FCMAE train step, from XLA's memory analysis (AOT, no run).

    python -m benchmarks.memory --config configs/fcmae_huge.py --devices 8 --fsdp 8 --batch 128

Forces `--devices` host devices (set before JAX starts), builds the config's sharded train state
abstractly, compiles the jitted step for the mesh (data = devices / fsdp) and prints what one
device holds: the state (params + AdamW moments), the batch, the temporaries, and the peak.
"""

from __future__ import annotations

import argparse
import importlib.util
import os


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/fcmae_huge.py")
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--fsdp", type=int, default=8)
  parser.add_argument("--batch", type=int, default=128, help="global batch")
  args = parser.parse_args(argv)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}")

  import jax
  import jax.numpy as jnp
  from fcmae import pretrain
  from trainer import loop

  spec = importlib.util.spec_from_file_location("config_module", args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.data.name = "demo"  # only for the dataset size; no data is read
  config.batch_size = args.batch
  config.mesh.data, config.mesh.fsdp = -1, args.fsdp
  task = pretrain.make_task(config, "/tmp/unused")
  run = loop.setup(config, task)
  size = config.data.image_size
  batch = {"image": jax.ShapeDtypeStruct((args.batch, size, size, 3), jnp.float32,
                                         sharding=run.batch_sharding),
           "label": jax.ShapeDtypeStruct((args.batch,), jnp.int32, sharding=run.batch_sharding)}
  rng = jax.eval_shape(lambda: jax.random.key(0))
  compiled = run.train_step.lower(run.abstract_state, batch, rng).compile()
  mem = compiled.memory_analysis()
  gib = lambda b: b / 2 ** 30
  n_params = sum(x.size for x in jax.tree.leaves(run.abstract_state["params"]))
  print(f"{config.model.variant}: {n_params / 1e6:.1f}M params, {config.model.dtype} compute, "
        f"scan={config.model.scan}, remat={config.model.remat}, mesh {dict(run.mesh.shape)}, "
        f"global batch {args.batch} at {size}px ({args.batch // args.devices} per device)")
  print(f"per device: arguments {gib(mem.argument_size_in_bytes):.2f} GiB (state + batch), "
        f"outputs {gib(mem.output_size_in_bytes):.2f} GiB, temporaries "
        f"{gib(mem.temp_size_in_bytes):.2f} GiB, aliased {gib(mem.alias_size_in_bytes):.2f} GiB")
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes)
  print(f"per device peak: {gib(peak):.2f} GiB")


if __name__ == "__main__":
  main()
