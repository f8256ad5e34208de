"""ConvNeXt V2 images/s: this model (JAX) vs transformers' PyTorch ConvNextV2, same CPU, one run.

    python -m benchmarks.model_speed [--variants atto tiny] [--batch 32] [--rounds 3] [--reps 3]
                                     [--scan] [--depthwise shift|xla] [--no-torch]

Inference (forward) and training (forward+backward) at 224, float32. JAX is jitted; PyTorch runs
eagerly (its usual use) with the same thread count.

Each framework runs in its own worker process, and the workers take turns: round 1 JAX then
PyTorch, round 2 again, and so on. In one shared process the two interfere (one allocator,
two thread pools) and move each other's figures in opposite directions (docs/cpu.md).
Each worker compiles and warms up, then times `--reps` calls; the figure printed is the median
over rounds of each worker's median. The training line also gives the temporary memory XLA
assigns to the compiled JAX training step, and each worker's minor page faults per training
call (the cost of memory that the allocator maps afresh). On a GPU (JAX only) add
--dtype bfloat16 to also print the share of peak FLOP/s.

The workers inherit the environment, so an allocator setting applies to both frameworks alike;
the first line prints GLIBC_TUNABLES. On CPU, `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` backs
XLA's per-step temporaries with transparent huge pages (docs/cpu.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from models import convnextv2, layers

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}
MODES = ("inference", "training")


def _median_seconds(fn, reps: int) -> tuple[float, float]:
  """Median seconds per call after a warm-up call, and minor page faults per timed call."""
  fn()  # compile / warm up
  times = []
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
  return statistics.median(times), faults / reps


def _timings(infer, train, reps: int) -> dict:
  inference, _ = _median_seconds(infer, reps)
  training, training_faults = _median_seconds(train, reps)
  return {"inference": inference, "training": training, "training_faults": training_faults}


def _jax_worker(args) -> dict:
  apply_fn, params = convnextv2.build(
    args.variant, dtype=args.dtype, scan=args.scan, depthwise_impl=args.depthwise
  )
  infer = jax.jit(apply_fn)
  train = jax.jit(jax.grad(lambda p, x: jnp.mean(apply_fn(p, x) ** 2)))
  x = jnp.asarray(_images(args))
  result = _timings(
    lambda: jax.block_until_ready(infer(params, x)),
    lambda: jax.block_until_ready(train(params, x)),
    args.reps,
  )
  result["device"] = jax.devices()[0].device_kind
  if args.memory:
    memory = train.lower(params, x).compile().memory_analysis()
    result["training_temp_gib"] = memory.temp_size_in_bytes / 2**30
  return result


def _torch_worker(args) -> dict:
  import torch
  from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

  spec = convnextv2.VARIANTS[args.variant]
  model = ConvNextV2ForImageClassification(
    ConvNextV2Config(hidden_sizes=list(spec["dims"]), depths=list(spec["depths"]), num_labels=1000)
  ).eval()
  x = torch.from_numpy(_images(args).transpose(0, 3, 1, 2).copy())

  def infer():
    with torch.inference_mode():
      return model(pixel_values=x).logits

  def train():
    model.zero_grad(set_to_none=True)
    loss = model(pixel_values=x).logits.pow(2).mean()
    loss.backward()
    return loss

  result = _timings(infer, train, args.reps)
  result["device"] = f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads"
  return result


def _images(args) -> np.ndarray:
  rng = np.random.default_rng(0)
  return rng.standard_normal((args.batch, args.image_size, args.image_size, 3)).astype(np.float32)


def _run_worker(framework: str, variant: str, args, memory: bool) -> dict:
  command = [
    sys.executable,
    "-m",
    "benchmarks.model_speed",
    "--worker",
    framework,
    "--variant",
    variant,
    "--batch",
    str(args.batch),
    "--image-size",
    str(args.image_size),
    "--reps",
    str(args.reps),
    "--dtype",
    args.dtype,
  ]
  if memory:
    command.append("--memory")
  if args.scan:
    command.append("--scan")
  if args.depthwise:
    command += ["--depthwise", args.depthwise]
  done = subprocess.run(command, capture_output=True, text=True, cwd=os.getcwd())
  if done.returncode != 0:
    raise RuntimeError(
      f"{framework} worker for {variant} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
    )
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", nargs="+", default=["atto", "tiny"])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--scan", action="store_true", help="lax.scan over the blocks of a stage")
  parser.add_argument(
    "--depthwise",
    choices=layers.DEPTHWISE_IMPLS,
    default=None,
    help="depthwise conv form (default: the backend's default)",
  )
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
  parser.add_argument("--variant", help=argparse.SUPPRESS)
  parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    worker = _jax_worker if args.worker == "jax" else _torch_worker
    print(json.dumps(worker(args)))
    return

  backend = jax.default_backend()
  use_torch = not args.no_torch and backend == "cpu"
  print(
    f"JAX backend {backend}, batch {args.batch}, {args.image_size}px, {args.dtype}, "
    f"depthwise {args.depthwise or layers.default_depthwise_impl()}, scan {args.scan}; "
    f"{args.rounds} rounds of {args.reps} timed calls, one process per framework per round; "
    f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}"
  )
  frameworks = ("jax", "torch") if use_torch else ("jax",)
  for variant in args.variants:
    seconds = {(fw, mode): [] for fw in frameworks for mode in MODES}
    faults = {fw: [] for fw in frameworks}
    devices = {}
    temp_gib = None
    for round_index in range(args.rounds):
      for fw in frameworks:
        result = _run_worker(fw, variant, args, memory=fw == "jax" and round_index == 0)
        temp_gib = result.get("training_temp_gib", temp_gib)
        for mode in MODES:
          seconds[(fw, mode)].append(result[mode])
        faults[fw].append(result["training_faults"])
        devices[fw] = result["device"]
    gmacs = convnextv2.gmacs(variant, args.image_size)
    for mode in MODES:
      jax_ips = args.batch / statistics.median(seconds[("jax", mode)])
      line = f"{variant:<6} {mode:<10} JAX {jax_ips:8.1f} img/s"
      if use_torch:
        torch_ips = args.batch / statistics.median(seconds[("torch", mode)])
        line += f"   PyTorch {torch_ips:8.1f} img/s   JAX/PyTorch {jax_ips / torch_ips:5.2f}x"
      flops = 2 * gmacs * 1e9 * (3 if mode == "training" else 1) * jax_ips
      line += f"   {flops / 1e12:7.3f} TFLOP/s"
      peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in devices.get("jax", "")), None)
      if peak and args.dtype == "bfloat16":
        line += f" ({100 * flops / 1e12 / peak:.1f}% of bf16 peak)"
      if mode == "training":
        if temp_gib is not None:
          line += f"   XLA temporaries {temp_gib:.2f} GiB"
        line += "   page faults/step " + " / ".join(
          f"{fw} {statistics.median(faults[fw]) / 1e3:.0f}k" for fw in frameworks
        )
      print(line, flush=True)


if __name__ == "__main__":
  main()
