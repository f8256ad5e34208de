"""Images per second, TFLOP/s and MFU of a config's real train step on this machine's devices.

    python -m benchmarks.train_step --config configs/fcmae_base.py --batch 256
    python -m benchmarks.train_step --config configs/fcmae_tiny.py --batch 256 \\
        --config.fcmae.impl=dense --config.model.depthwise_impl=shift --out results.jsonl
    python -m benchmarks.train_step --config configs/fcmae_base.py --batch 128 --compile_only=h100:1

The config and its `--config.FIELD=VALUE` overrides are read as train.py / finetune.py read them
(trainer/cli.py: read_config), and the run is built as they build it (loop.setup: mesh over all
local devices, sharded state, the donated train step compiled ahead of time), with the state
replicated over a data-parallel mesh. Batches are random uint8 images already on the devices, so
the figures are the step's own, not the input pipeline's (benchmarks/input_pipeline.py measures
that), and nothing here imports TensorFlow. After `--warmup` steps, `--steps` steps are timed one
by one; the median step gives images/s, and the compiled step's FLOPs per example
(core/cost.py) give TFLOP/s per device and MFU where the device's peak is known. Prints one
line and appends one JSON object to `--out`. On a GPU the line also gives the HBM bytes the step
moves per image, its kernels and its roofline (core/hlo_traffic.py).

`--compile_only=h100:1` builds the same step (the same batch, data parallel over the topology's
devices) and compiles it for that topology on this machine, without its devices
(trainer/compile_only.py): the bytes per image and the kernels of the step a GPU would run, counted
without a GPU.
"""

from __future__ import annotations

import datetime
import json
import statistics
import sys
import time

from absl import app, flags

from core import errors
from trainer import cli

FLAGS = flags.FLAGS
cli.define_config_flag("Config file (configs/*.py[:arg]).")
flags.DEFINE_integer("batch", 128, "Global batch (a multiple of the device count).")
flags.DEFINE_integer("warmup", 3, "Steps run before timing.")
flags.DEFINE_integer("steps", 10, "Steps timed.")
flags.DEFINE_string("out", None, "Append the result as a JSON line to this file.")
flags.DEFINE_string(
  "compile_only",
  "",
  "TOPOLOGY (h100:1, v5e:2x2): compile the step for it here and report its memory, FLOPs and, "
  "for GPUs, HBM bytes per image and kernels, instead of running it.",
)
flags.DEFINE_bool(
  "trace_only",
  False,
  "Build the run and trace its step (config, flags, task, sharded state, the step's FLOPs), "
  "without compiling or running it: the cheap check of gpu.sh --dry-run.",
)


def main(argv):
  del argv
  benchmark()


def benchmark() -> dict:
  """Times the step of --config as the flags say; prints one line, returns the result."""
  config = cli.read_config(FLAGS)
  overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
  config.batch_size = FLAGS.batch
  config.mesh.data, config.mesh.fsdp = -1, 1  # data parallel over every device

  import jax
  import numpy as np

  from configs import schema
  from data import info as data_info
  from trainer import loop

  schema.validate(config)
  if "fcmae" in config:
    from fcmae import pretrain

    make_task = pretrain.make_task
  else:
    from classify import task as finetune_task

    make_task = finetune_task.make_task
  if FLAGS.compile_only:
    from trainer import compile_only

    jax.config.update("jax_platforms", "cpu")  # the host compiles; no accelerator is looked for
    sys.exit(compile_only.compile_and_report(config, make_task, FLAGS.compile_only))
  task = make_task(config, None, info=data_info.IMAGENET_1K)
  run = loop.setup(config, task)
  name = FLAGS["config"].config_filename
  if FLAGS.trace_only:
    from core import cost as cost_lib

    traced = run.train_step.trace(run.abstract_state, run.abstract_batch)
    gflop = cost_lib.jaxpr_flops(traced.jaxpr) / FLAGS.batch / 1e9
    result = {
      "config": name,
      "overrides": overrides,
      "traced_only": True,
      "gflop_per_example": gflop,
    }
    print(f"{name} {' '.join(overrides)}: traced, {gflop:.2f} GFLOP per example", flush=True)
    return _write(result)
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
  metrics = None
  for _ in range(FLAGS.warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(FLAGS.steps):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  rate = FLAGS.batch / seconds
  device = jax.devices()[0]
  result = {
    "date": datetime.date.today().isoformat(),
    "device": device.device_kind,
    "num_devices": jax.device_count(),
    "config": name,
    "overrides": overrides,
    "global_batch": FLAGS.batch,
    "depthwise_impl": run_impl(config),
    "step_ms": 1e3 * seconds,
    "images_per_sec": rate,
    "tflops_per_device": cost.tflops_per_device(rate),
    "mfu": cost.mfu(rate),
    "final_loss": float(metrics["loss"]),
    **cost.report(),
  }
  if device.platform == "gpu":
    from trainer import compile_only

    result.update(cost.traffic_report(blocks=compile_only.blocks(config)))
  traffic = ""
  if "hbm_mb_per_example" in result:
    traffic = (
      f"; {result['hbm_mb_per_example']:.0f} MB HBM traffic per example, "
      f"{result['kernels_per_block']:.0f} kernels per block"
    )
  mfu = f", MFU {result['mfu']:.1%}" if result["mfu"] is not None else ""
  print(
    f"{name} {' '.join(overrides)}: {rate:.0f} img/s ({1e3 * seconds:.0f} ms/step, "
    f"batch {FLAGS.batch}, {jax.device_count()} x {device.device_kind}), "
    f"{result['tflops_per_device']:.1f} TFLOP/s per device{mfu}; compiled in "
    f"{cost.compile_seconds:.0f} s, {result['gflop_per_example']:.1f} GFLOP per example, "
    f"{result['total_gib_per_device']:.1f} GiB per device{traffic}",
    flush=True,
  )
  return _write(result)


def _write(result: dict) -> dict:
  if FLAGS.out:
    with open(FLAGS.out, "a") as f:
      f.write(json.dumps(result) + "\n")
  return result


def run_impl(config) -> str:
  from models import layers

  return config.model.depthwise_impl or layers.default_depthwise_impl()


if __name__ == "__main__":
  app.run(errors.guarded(main), flags_parser=cli.parse_flags)
