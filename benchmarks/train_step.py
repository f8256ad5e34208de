"""Images per second, TFLOP/s and MFU of a config's real train step on this machine's devices.

    python -m benchmarks.train_step --config configs/fcmae_base.py --batch 256
    python -m benchmarks.train_step --config configs/fcmae_tiny.py --batch 256 \\
        --set fcmae.impl=dense model.depthwise_impl=shift --out results.jsonl

The run is built as train.py / finetune.py build it (loop.setup: mesh over all local devices,
sharded state, the donated train step compiled ahead of time), with `--set` overrides; batches are
random uint8 images already on the devices, so the figures are the step's own, not the input
pipeline's (benchmarks/input_pipeline.py measures that). After `--warmup` steps, `--steps` steps
are timed one by one; the median step gives images/s, and the compiled step's FLOPs per example
(trainer/cost.py) give TFLOP/s per device and MFU where the device's peak is known. Prints one
line and appends one JSON object to `--out`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import statistics
import time


def load_config(path: str, overrides: list[str]):
  spec = importlib.util.spec_from_file_location("config_module", path.split(":")[0])
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(path.split(":")[1] if ":" in path else None)
  for item in overrides:
    key, value = item.split("=", 1)
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    current = node[leaf]
    node[leaf] = (
      value.lower() in ("1", "true") if isinstance(current, bool) else type(current)(value)
    )
  return config


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--batch", type=int, default=128, help="global batch")
  parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)

  import jax
  import numpy as np

  from data import sources
  from trainer import loop

  config = load_config(
    args.config, [f"batch_size={args.batch}", "mesh.data=-1", "mesh.fsdp=1", *args.set]
  )
  if "fcmae" in config:
    from fcmae import pretrain

    make_task = pretrain.make_task
  else:
    from classify import task as finetune_task

    make_task = finetune_task.make_task
  task = make_task(config, None, info=sources.IMAGENET_1K)
  run = loop.setup(config, task)
  cost = run.compile_train_step()
  state = run.init_state()
  rng = np.random.default_rng(0)
  batch = {
    name: jax.device_put(
      rng.integers(0, 255 if name == "image" else 1000, spec.shape).astype(spec.dtype),
      run.batch_sharding,
    )
    for name, spec in run.abstract_batch.items()
  }
  step = cost.executable
  for _ in range(args.warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  rate = args.batch / seconds
  device = jax.devices()[0]
  result = {
    "date": datetime.date.today().isoformat(),
    "device": device.device_kind,
    "num_devices": jax.device_count(),
    "config": args.config,
    "set": args.set,
    "global_batch": args.batch,
    "depthwise_impl": run_impl(config),
    "step_ms": 1e3 * seconds,
    "images_per_sec": rate,
    "tflops_per_device": cost.tflops_per_device(rate),
    "mfu": cost.mfu(rate),
    **cost.report(),
  }
  mfu = f", MFU {result['mfu']:.1%}" if result["mfu"] is not None else ""
  print(
    f"{args.config} {' '.join(args.set)}: {rate:.0f} img/s ({1e3 * seconds:.0f} ms/step, "
    f"batch {args.batch}, {jax.device_count()} x {device.device_kind}), "
    f"{result['tflops_per_device']:.1f} TFLOP/s per device{mfu}; compiled in "
    f"{cost.compile_seconds:.0f} s, {result['gflop_per_example']:.1f} GFLOP per example, "
    f"{result['total_gib_per_device']:.1f} GiB per device",
    flush=True,
  )
  if args.out:
    with open(args.out, "a") as f:
      f.write(json.dumps(result) + "\n")
  return result


def run_impl(config) -> str:
  from models import layers

  return config.model.depthwise_impl or layers.default_depthwise_impl()


if __name__ == "__main__":
  main()
