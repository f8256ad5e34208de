"""ConvNeXt V2 images/s: this model (JAX) vs transformers' PyTorch ConvNextV2, same CPU, one run.

    python -m benchmarks.model_speed [--variants atto tiny] [--batch 32] [--reps 5]

Inference (forward) and training (forward+backward) at 224, float32. JAX is jitted; PyTorch runs
eagerly (its usual use) with the same thread count. Each configuration is warmed up, then the
two frameworks are timed in alternation; medians are printed. On a GPU (JAX only) add --dtype
bfloat16 to also print the share of peak FLOP/s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from models import convnextv2

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}


def _jax_fns(variant, dtype):
  apply_fn, params = convnextv2.build(variant, dtype=dtype)
  infer = jax.jit(apply_fn)
  train = jax.jit(jax.grad(lambda p, x: jnp.mean(apply_fn(p, x) ** 2)))
  return params, infer, train


def _torch_fns(variant):
  import torch
  from transformers import ConvNextV2Config, ConvNextV2ForImageClassification
  spec = convnextv2.VARIANTS[variant]
  model = ConvNextV2ForImageClassification(ConvNextV2Config(
      hidden_sizes=list(spec["dims"]), depths=list(spec["depths"]), num_labels=1000)).eval()

  def infer(x):
    with torch.inference_mode():
      return model(pixel_values=x).logits

  def train(x):
    model.zero_grad(set_to_none=True)
    loss = model(pixel_values=x).logits.pow(2).mean()
    loss.backward()
    return loss

  return infer, train


def _median_time(fn, reps):
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", nargs="+", default=["atto", "tiny"])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--no-torch", action="store_true")
  args = parser.parse_args(argv)
  device = jax.devices()[0]
  print(f"JAX backend {jax.default_backend()} ({device.device_kind}), batch {args.batch}, "
        f"{args.image_size}px, {args.dtype}")
  use_torch = not args.no_torch and jax.default_backend() == "cpu"
  if use_torch:
    import torch
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads")
  rng = np.random.default_rng(0)
  x_np = rng.standard_normal((args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
  for variant in args.variants:
    params, infer, train = _jax_fns(variant, args.dtype)
    x = jnp.asarray(x_np)
    jax_runs = {"inference": lambda: jax.block_until_ready(infer(params, x)),
                "training": lambda: jax.block_until_ready(train(params, x))}
    runs = {("jax", k): v for k, v in jax_runs.items()}
    if use_torch:
      t_infer, t_train = _torch_fns(variant)
      xt = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy())
      runs[("torch", "inference")] = lambda: t_infer(xt)
      runs[("torch", "training")] = lambda: t_train(xt)
    for fn in runs.values():  # compile / warm up
      fn()
    times = {key: [] for key in runs}
    for _ in range(args.reps):
      for key, fn in runs.items():
        times[key].append(_median_time(fn, 1))
    gmacs = convnextv2.gmacs(variant, args.image_size)
    for mode in ("inference", "training"):
      jax_ips = args.batch / statistics.median(times[("jax", mode)])
      line = f"{variant:<6} {mode:<10} JAX {jax_ips:8.1f} img/s"
      if use_torch:
        torch_ips = args.batch / statistics.median(times[("torch", mode)])
        line += f"   PyTorch {torch_ips:8.1f} img/s   JAX/PyTorch {jax_ips / torch_ips:5.2f}x"
      flops = 2 * gmacs * 1e9 * (3 if mode == "training" else 1) * jax_ips
      line += f"   {flops / 1e12:7.2f} TFLOP/s"
      peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device.device_kind), None)
      if peak and args.dtype == "bfloat16":
        line += f" ({100 * flops / 1e12 / peak:.1f}% of bf16 peak)"
      print(line)


if __name__ == "__main__":
  main()
