"""FCMAE forward+backward step time, dense emulation vs visible-only ("sparse"), side by side.

    python -m benchmarks.fcmae_step --variants tiny base --batch 8 --reps 5

Both forms are compiled first, then timed in alternation (dense, sparse, dense, ...) so that
machine noise hits both alike; prints medians, the ratio, and the compiled step's FLOPs as XLA
counts them (all ops, forward and backward, in GFLOP per image).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from fcmae import masking
from fcmae import model as fcmae_model


def make_step(variant, impl, image_size, dtype):
  loss_fn, params = fcmae_model.build(variant, impl=impl, image_size=image_size, dtype=dtype)
  step = jax.jit(jax.value_and_grad(lambda p, x, m: loss_fn(p, x, m)[0]))
  return step, params


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", nargs="+", default=["tiny", "base"])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args(argv)

  print(
    f"backend {jax.default_backend()}, {jax.devices()[0].device_kind}, batch {args.batch}, "
    f"{args.image_size}px, {args.dtype}, mask ratio 0.6"
  )
  rng = np.random.default_rng(0)
  grid = masking.grid_shape(args.image_size)
  for variant in args.variants:
    images = jnp.asarray(
      rng.standard_normal((args.batch, args.image_size, args.image_size, 3)), jnp.float32
    )
    mask = masking.random_mask(jax.random.key(0), args.batch, grid[0] * grid[1], 0.6)
    steps, flops, times = {}, {}, {"dense": [], "sparse": []}
    for impl in times:
      step, params = make_step(variant, impl, args.image_size, args.dtype)
      compiled = step.lower(params, images, mask).compile()
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      flops[impl] = cost.get("flops", float("nan")) / args.batch / 1e9
      jax.block_until_ready(compiled(params, images, mask))  # warm up
      steps[impl] = (compiled, params)
    for _ in range(args.reps):
      for impl, (compiled, params) in steps.items():
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, images, mask))
        times[impl].append(time.perf_counter() - start)
    med = {impl: statistics.median(t) for impl, t in times.items()}
    for impl in ("dense", "sparse"):
      print(
        f"{variant:<6} {impl:<7} step {med[impl] * 1e3:9.1f} ms  "
        f"{args.batch / med[impl]:7.2f} img/s  {flops[impl]:7.2f} GFLOP/img (XLA)"
      )
    print(
      f"{variant:<6} sparse speed-up {med['dense'] / med['sparse']:.2f}x "
      f"(FLOP ratio {flops['dense'] / flops['sparse']:.2f}x)"
    )


if __name__ == "__main__":
  main()
