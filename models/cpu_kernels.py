"""XLA:CPU kernels: forms of two ops that compile well on a CPU, each with its own gradient.

- `depthwise_shift`: the 7x7 depthwise convolution as a sum of 49 shifted slices times
  per-channel weights. On CPU, XLA's grouped convolution is many times slower (docs/cpu.md). The
  custom gradient keeps only the input alive instead of 49 shifted copies; the input gradient is
  again a depthwise correlation (with the flipped kernel) and the kernel gradient takes the seven
  column offsets of each kernel row together.
- `dense`: x @ kernel with a kernel gradient that XLA:CPU computes without transposed copies of
  the activations.

`models/layers.py` uses them when the program is compiled for a CPU (`layers.platform()`);
GPUs and TPUs get XLA's own convolution and dot. The numbers behind each choice are in docs/cpu.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _fusion_fence(x: jax.Array) -> jax.Array:
  """Identity that XLA:CPU's library (YNNPACK) fusion pass cannot see through.

  Without it, the pass that hands a LayerNorm's reduction to YNNPACK pulls the whole 49-term
  shifted sum into the same library call, and every shifted slice and every broadcast kernel
  tap is then written out as a full-size tensor (about half of an atto training step).
  reduce_precision to the value's own format changes no bit, and the pass does not support it,
  so the shifted sum stays one loop fusion.
  """
  info = jnp.finfo(x.dtype)
  return jax.lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def _shifted_sum(xp: jax.Array, w: jax.Array, height: int, width: int) -> jax.Array:
  """sum_{i,j} xp[:, i:i+H, j:j+W, :] * w[i, j]; xp (B, H+k-1, W+k-1, C), w (k, k, C)."""
  k = w.shape[0]
  acc_dtype = jnp.promote_types(xp.dtype, jnp.float32)
  out = None
  for i in range(k):
    for j in range(k):
      term = xp[:, i : i + height, j : j + width, :].astype(acc_dtype) * w[i, j].astype(acc_dtype)
      out = term if out is None else out + term
  return _fusion_fence(out.astype(xp.dtype))


def _column_windows(xp: jax.Array, width: int, k: int) -> jax.Array:
  """(B, R, width+k-1, C) -> (B, R, width, k, C) with out[:, :, w, j] = xp[:, :, w + j].

  Built from a broadcast, reshapes and slices only, so that XLA fuses it into the consumer as
  index arithmetic and never writes the k-fold tensor out: broadcast each row to width+1
  copies, flatten them, and reread the flat row with a stride one longer than the row.
  """
  batch, rows, length, channels = xp.shape
  y = jnp.broadcast_to(xp[:, :, None], (batch, rows, width + 1, length, channels))
  y = y.reshape(batch, rows, (width + 1) * length, channels)[:, :, : width * (length + 1)]
  return y.reshape(batch, rows, width, length + 1, channels)[:, :, :, :k]


def _row_group(height: int, k: int) -> int:
  """Rows summed inside the product fusion: k to 2k, or the height if it is shorter.

  The one among them that needs the fewest zero rows of padding, the larger on a tie.
  """
  if height <= k:
    return height
  return min(range(k, 2 * k + 1), key=lambda r: (-(-height // r) * r, -r))


def _kernel_gradient(x: jax.Array, g: jax.Array, k: int) -> jax.Array:
  """dw[i, j, c] = sum_{b,h,w} xpad[b, h+i, w+j, c] * g[b, h, w, c], in float32.

  One product fusion per kernel row i computes all k column offsets at once, from a k-wide
  window of the padded input (`_column_windows`), so each fusion reads its two operands once
  instead of once per offset. The fusion also adds up groups of `_row_group` consecutive rows,
  so that only a tensor at most the input's size (for heights of at least k) goes to the final
  reduction (a reduction fed directly by the product is taken by XLA:CPU's library fusion,
  which first writes the product out at full size). The batch axis is reduced, not looped
  over, so a batch sharded across devices stays sharded.

  XLA fuses elementwise producers of `x` and `g` into these fusions, where they are recomputed
  for every offset. In the network both arrive materialized (the padded block input; the next
  LayerNorm's gradient), times FCMAE's visibility mask when masking, so this costs nothing.
  The bad case is a gradient computed from this convolution's own output, as in
  `sum(conv(x) ** 2)`: the 49-term sum then runs 49 times (docs/cpu.md has the cost), which is
  why `benchmarks/depthwise.py` uses a fixed output gradient.
  `jax.lax.optimization_barrier` does not stop this fusion on XLA:CPU.
  """
  batch, height, width, channels = x.shape
  rows = _row_group(height, k)
  groups = -(-height // rows)
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  # Zero rows below the image (for `groups * rows` rows) contribute nothing to the sums.
  extra = groups * rows - height
  xp = jnp.pad(x, ((0, 0), (k // 2, k // 2 + extra), (k // 2, k // 2), (0, 0)))
  g = jnp.pad(g.astype(acc_dtype), ((0, 0), (0, extra), (0, 0), (0, 0)))[:, :, :, None, :]
  dw = []
  for i in range(k):
    windows = _column_windows(xp[:, i : i + groups * rows], width, k).astype(acc_dtype)
    product = (windows * g).reshape(batch, groups, rows, width, k, channels)
    partial = product[:, :, 0]
    for r in range(1, rows):
      partial = partial + product[:, :, r]
    dw.append(jnp.sum(_fusion_fence(partial), axis=(0, 1, 2)))
  return jnp.stack(dw)


def _pad(x: jax.Array, p: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


@jax.custom_vjp
def depthwise_shift(x: jax.Array, w: jax.Array) -> jax.Array:
  """ "Same"-padded stride-1 depthwise correlation of x (B, H, W, C) with w (k, k, C), k odd."""
  k = w.shape[0]
  return _shifted_sum(_pad(x, k // 2), w, x.shape[1], x.shape[2])


def _depthwise_shift_fwd(x, w):
  return depthwise_shift(x, w), (x, w)


def _depthwise_shift_bwd(residuals, g):
  x, w = residuals
  k = w.shape[0]
  # The gradient of a depthwise correlation w.r.t. its input is a correlation with the flipped
  # kernel; w.r.t. the kernel it is the correlation of the padded input with the output gradient.
  dx = _shifted_sum(_pad(g, k // 2), w[::-1, ::-1], x.shape[1], x.shape[2])
  return dx.astype(x.dtype), _kernel_gradient(x, g, k).astype(w.dtype)


depthwise_shift.defvjp(_depthwise_shift_fwd, _depthwise_shift_bwd)


@jax.custom_vjp
def dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x @ kernel over the last axis of x (any number of leading axes); kernel (in, out).

  The same product as jnp.dot, with a kernel gradient that XLA:CPU computes without a
  transposed copy of the activations (see `_dense_kernel_gradient`).
  """
  return jnp.dot(x, kernel)


def _dense_fwd(x, kernel):
  return jnp.dot(x, kernel), (x, kernel)


def _dense_kernel_gradient(x: jax.Array, g: jax.Array) -> jax.Array:
  """sum over all leading positions of x[..., :, None] * g[..., None, :], in float32.

  As one dot contracting the (batch * positions) axis, XLA:CPU first writes transposed copies
  of the activations and of the gradient: two extra passes over the largest tensors of a
  block. Split into two halves of the positions (for an even batch, the two halves of the
  batch), one batched dot and a sum of the two partial (in, out) results reads its operands
  in place: faster on atto's first three stage shapes, equal in the last (more chunks lose
  there), and faster at batch 1 too, where the split falls inside the sample. The two halves
  are added elementwise, because YNNPACK is slow at a reduction over an axis of length 2.
  docs/cpu.md has the figures.
  """
  acc = jnp.promote_types(x.dtype, jnp.float32)
  positions = x.size // x.shape[-1]
  if x.ndim >= 3 and positions % 2 == 0:
    xs, gs = x.reshape(2, -1, x.shape[-1]), g.reshape(2, -1, g.shape[-1])
    halves = jnp.einsum("bnc,bnd->bcd", xs, gs, preferred_element_type=acc)
    return halves[0] + halves[1]
  lead = tuple(range(x.ndim - 1))
  return jax.lax.dot_general(x, g, ((lead, lead), ((), ())), preferred_element_type=acc)


def _dense_bwd(residuals, g):
  x, kernel = residuals
  dx = jnp.dot(g, kernel.T)
  return dx.astype(x.dtype), _dense_kernel_gradient(x, g).astype(kernel.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)
