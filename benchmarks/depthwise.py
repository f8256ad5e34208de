"""7x7 depthwise convolution: shifted-slice form (custom gradient) vs XLA's grouped convolution.

    python -m benchmarks.depthwise [--batch 32] [--reps 7]

Times forward and forward+backward (with a fixed output gradient, as in the network) at the
shapes of ConvNeXt V2-Tiny's four stages at 224, both forms compiled first and then timed in
alternation; prints medians and the ratio. This is the measurement behind
`models.layers.default_depthwise_impl`.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from models import layers

TINY_STAGES = [(56, 96), (28, 192), (14, 384), (7, 768)]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args(argv)
  dtype = jnp.dtype(args.dtype)
  print(f"backend {jax.default_backend()}, batch {args.batch}, {args.dtype}")
  print(f"{'shape (HxW, C)':<16}{'pass':<10}{'xla ms':>10}{'shift ms':>10}{'speed-up':>10}")
  rng = np.random.default_rng(0)
  for side, channels in TINY_STAGES:
    x = jnp.asarray(rng.standard_normal((args.batch, side, side, channels)), dtype)
    kernel = jnp.asarray(rng.standard_normal((7, 7, 1, channels)) * 0.02, dtype)
    # A fixed output gradient, as the network's next LayerNorm hands back a materialized one.
    cotangent = jnp.asarray(rng.standard_normal(x.shape), dtype)
    for name in ("forward", "fwd+bwd"):
      fns = {}
      for impl in ("xla", "shift"):
        conv = functools.partial(layers.depthwise_conv, impl=impl)
        if name == "forward":
          fns[impl] = jax.jit(conv)
        else:

          def forward_backward(x, k, conv=conv):
            out, pullback = jax.vjp(conv, x, k)
            return out, pullback(cotangent)

          fns[impl] = jax.jit(forward_backward)
        jax.block_until_ready(fns[impl](x, kernel))
      times = {impl: [] for impl in fns}
      for _ in range(args.reps):
        for impl, fn in fns.items():
          start = time.perf_counter()
          jax.block_until_ready(fn(x, kernel))
          times[impl].append(time.perf_counter() - start)
      med = {impl: statistics.median(t) * 1e3 for impl, t in times.items()}
      print(
        f"{f'{side}x{side}, {channels}':<16}{name:<10}{med['xla']:>10.2f}{med['shift']:>10.2f}"
        f"{med['xla'] / med['shift']:>9.1f}x"
      )


if __name__ == "__main__":
  main()
