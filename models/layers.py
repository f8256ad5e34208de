"""Building blocks of ConvNeXt V2 that need more care than a stock Flax layer.

- `depthwise_conv`: the 7x7 depthwise convolution in two interchangeable forms: XLA's grouped
  convolution ("xla") and a sum of shifted slices with its own gradient ("shift"). On CPU the
  grouped convolution is many times slower (see README, "Depthwise convolution"); the custom
  gradient keeps only the input alive instead of 49 shifted copies.
- `LayerNorm`: channels-last LayerNorm with float32 statistics and a two-pass variance
  (as PyTorch computes it), whatever the compute dtype.
- `grn` / `GRN`: Global Response Normalization with a hand-written gradient (finite at all-zero
  channels) and an optional visibility mask (FCMAE's dense emulation of sparse convolution).
- `drop_path`: per-sample stochastic depth.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

DEPTHWISE_IMPLS = ("shift", "xla")

trunc_normal_02 = nnx.initializers.truncated_normal(stddev=0.02, lower=-2.0 / 0.02, upper=2.0 / 0.02)


def default_depthwise_impl(backend: str | None = None) -> str:
  """The faster depthwise form per backend, as measured by benchmarks/depthwise.py.

  CPU: the shifted-slice form is 8-17x faster forward and 8-24x faster forward+backward than
  XLA's grouped conv (benchmarks/depthwise.py: ConvNeXt V2-Tiny's stage shapes, batch 32, two
  runs; see the README).
  GPU/TPU: grouped convolutions map onto cuDNN / the TPU's conv units, so XLA's own op is used.
  """
  backend = backend or jax.default_backend()
  return "shift" if backend == "cpu" else "xla"


# --------------------------------------------------------------------------------------------
# Depthwise convolution.


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
      term = xp[:, i:i + height, j:j + width, :].astype(acc_dtype) * w[i, j].astype(acc_dtype)
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
  y = y.reshape(batch, rows, (width + 1) * length, channels)[:, :, :width * (length + 1)]
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
  `sum(conv(x) ** 2)`: the 49-term sum then runs 49 times (8 s instead of 0.3 s at 56x56x96,
  batch 32), which is why `benchmarks/depthwise.py` uses a fixed output gradient.
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
    windows = _column_windows(xp[:, i:i + groups * rows], width, k).astype(acc_dtype)
    product = (windows * g).reshape(batch, groups, rows, width, k, channels)
    partial = product[:, :, 0]
    for r in range(1, rows):
      partial = partial + product[:, :, r]
    dw.append(jnp.sum(_fusion_fence(partial), axis=(0, 1, 2)))
  return jnp.stack(dw)


def _pad(x: jax.Array, p: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


@jax.custom_vjp
def _depthwise_shift(x: jax.Array, w: jax.Array) -> jax.Array:
  k = w.shape[0]
  return _shifted_sum(_pad(x, k // 2), w, x.shape[1], x.shape[2])


def _depthwise_shift_fwd(x, w):
  return _depthwise_shift(x, w), (x, w)


def _depthwise_shift_bwd(residuals, g):
  x, w = residuals
  k = w.shape[0]
  # The gradient of a depthwise correlation w.r.t. its input is a correlation with the flipped
  # kernel; w.r.t. the kernel it is the correlation of the padded input with the output gradient.
  dx = _shifted_sum(_pad(g, k // 2), w[::-1, ::-1], x.shape[1], x.shape[2])
  return dx.astype(x.dtype), _kernel_gradient(x, g, k).astype(w.dtype)


_depthwise_shift.defvjp(_depthwise_shift_fwd, _depthwise_shift_bwd)


def depthwise_conv(x: jax.Array, kernel: jax.Array, impl: str = "shift") -> jax.Array:
  """'Same'-padded stride-1 depthwise convolution, no bias.

  Args:
    x: (B, H, W, C).
    kernel: (k, k, 1, C), Flax's grouped-conv layout; k odd.
    impl: "shift" (sum of shifted slices, custom gradient) or "xla" (grouped convolution).
  Returns:
    (B, H, W, C) in x's dtype.
  """
  if impl == "shift":
    return _depthwise_shift(x, kernel[:, :, 0, :])
  if impl == "xla":
    p = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=((p, p), (p, p)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
  raise ValueError(f"Unknown depthwise impl {impl!r}; expected one of {DEPTHWISE_IMPLS}.")


# --------------------------------------------------------------------------------------------
# Layers with parameters.


class DepthwiseConv(nnx.Module):
  """7x7 depthwise conv with bias; kernel (k, k, 1, C) as Flax's grouped conv stores it."""

  def __init__(self, dim: int, kernel_size: int = 7, *, impl: str, dtype, rngs: nnx.Rngs):
    if impl not in DEPTHWISE_IMPLS:
      raise ValueError(f"Unknown depthwise impl {impl!r}; expected one of {DEPTHWISE_IMPLS}.")
    self.kernel = nnx.Param(trunc_normal_02(rngs.params(), (kernel_size, kernel_size, 1, dim)))
    self.bias = nnx.Param(jnp.zeros((dim,)))
    self.impl = impl
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    return depthwise_conv(x, self.kernel[...].astype(self.dtype), self.impl) + self.bias[...].astype(self.dtype)


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
  in place. On atto's four stage shapes at batch 32 that is 2.6x, 2.8x, 1.7x faster and equal
  in the last stage (more chunks lose there); at batch 1, where the split falls inside the
  sample, an atto training step is about 5% faster than with the single dot. The two halves
  are added elementwise: as a reduction over the axis of length 2, YNNPACK took 30 ms per
  (3072, 768) kernel at Tiny's last stage. CPU only; other backends take the plain dot.
  """
  acc = jnp.promote_types(x.dtype, jnp.float32)
  positions = x.size // x.shape[-1]
  if x.ndim >= 3 and positions % 2 == 0 and jax.default_backend() == "cpu":
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


class Dense(nnx.Module):
  """x @ kernel + bias over the last axis; kernel (in, out). Any number of leading axes."""

  def __init__(self, din: int, dout: int, *, dtype, rngs: nnx.Rngs):
    self.kernel = nnx.Param(trunc_normal_02(rngs.params(), (din, dout)))
    self.bias = nnx.Param(jnp.zeros((dout,)))
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = dense(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    return y + self.bias[...].astype(self.dtype)


class PatchConv(nnx.Module):
  """Non-overlapping k x k stride-k conv (stem 4x4, downsampling 2x2); kernel HWIO.

  Written as a reshape plus one matmul: identical to the strided convolution and it never mixes
  pixels across k x k windows, which the sparse FCMAE encoder relies on.
  """

  def __init__(self, din: int, dout: int, patch: int, *, dtype, rngs: nnx.Rngs):
    self.kernel = nnx.Param(trunc_normal_02(rngs.params(), (patch, patch, din, dout)))
    self.bias = nnx.Param(jnp.zeros((dout,)))
    self.patch = patch
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """x (..., H, W, Cin) -> (..., H/k, W/k, Cout)."""
    k = self.patch
    *lead, h, w, c = x.shape
    x = x.astype(self.dtype).reshape(*lead, h // k, k, w // k, k, c)
    x = jnp.swapaxes(x, -4, -3).reshape(*lead, h // k, w // k, k * k * c)  # (p, q, c) order
    kernel = self.kernel[...].astype(self.dtype).reshape(k * k * c, -1)
    return dense(x, kernel) + self.bias[...].astype(self.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis with float32 statistics and two-pass variance."""

  def __init__(self, dim: int, eps: float = 1e-6, *, dtype):
    self.scale = nnx.Param(jnp.ones((dim,)))
    self.bias = nnx.Param(jnp.zeros((dim,)))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    centered = x32 - mean
    var = jnp.mean(jnp.square(centered), axis=-1, keepdims=True)
    y = centered * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
    return y.astype(self.dtype)


def _safe_sqrt(s: jax.Array) -> jax.Array:
  """sqrt with a zero (not NaN/inf) gradient at 0: exact for s > 0."""
  positive = s > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, s, 1.0)), 0.0)


def grn(x: jax.Array, gamma: jax.Array, beta: jax.Array, visible: jax.Array | None = None,
        spatial_axes: tuple[int, ...] = (1, 2), out_dtype=None) -> jax.Array:
  """Global Response Normalization, out = gamma * (x * Nx) + beta + x, with its own gradient.

  Gx is the L2 norm of each channel over `spatial_axes` of one sample (only where `visible`, if
  given), Nx = Gx / (mean_C Gx + 1e-6); statistics in float32 whatever x's dtype. The gradient of
  sqrt is taken as 0 at an all-zero channel (finite, and exact everywhere else).

  The gradient is written out by hand (`_grn_bwd`): one pass over x and the incoming gradient
  gives every per-sample sum it needs, and the gamma and beta gradients come from those sums
  instead of two more passes over the full tensor, which is what autodiff produced (3-7% of a
  ConvNeXt V2 atto or tiny training step on CPU).
  """
  if visible is not None:
    visible = visible.astype(jnp.promote_types(x.dtype, jnp.float32))
  return _grn(x, gamma, beta, visible, tuple(spatial_axes), jnp.dtype(out_dtype or x.dtype))


def _grn_statistics(x32, visible, spatial_axes):
  sq = jnp.square(x32)
  if visible is not None:
    sq = sq * visible
  gx = _safe_sqrt(jnp.sum(sq, axis=spatial_axes, keepdims=True))  # (B, 1.., C)
  denominator = jnp.mean(gx, axis=-1, keepdims=True) + 1e-6
  return gx, denominator


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _grn(x, gamma, beta, visible, spatial_axes, out_dtype):
  return _grn_fwd(x, gamma, beta, visible, spatial_axes, out_dtype)[0]


def _grn_fwd(x, gamma, beta, visible, spatial_axes, out_dtype):
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  gx, denominator = _grn_statistics(x32, visible, spatial_axes)
  y = gamma * (x32 * (gx / denominator)) + beta + x32
  return y.astype(out_dtype), (x, gamma, visible, gx, denominator)


def _grn_bwd(spatial_axes, out_dtype, residuals, g):
  del out_dtype
  x, gamma, visible, gx, denominator = residuals
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  g32 = g.astype(x32.dtype)
  nx = gx / denominator
  # Per-sample, per-channel sums over the spatial axes: the only passes over the full tensors.
  g_dot_x = jnp.sum(g32 * x32, axis=spatial_axes, keepdims=True)
  g_sum = jnp.sum(g32, axis=spatial_axes, keepdims=True)
  leading = tuple(range(x.ndim - 1))
  dgamma = jnp.sum(nx * g_dot_x, axis=leading).reshape(gamma.shape)
  dbeta = jnp.sum(g_sum, axis=leading).reshape(gamma.shape)
  # Through Nx = Gx / d, d = mean_C Gx + eps, then Gx = sqrt(s) with s the sum of squares.
  dnx = gamma * g_dot_x
  dgx = dnx / denominator - jnp.mean(dnx * gx, axis=-1, keepdims=True) / jnp.square(denominator)
  positive = gx > 0
  ds = jnp.where(positive, dgx / (2.0 * jnp.where(positive, gx, 1.0)), 0.0)
  d_square = 2.0 * ds if visible is None else 2.0 * ds * visible
  dx = g32 * (gamma * nx + 1.0) + x32 * d_square
  dvisible = None if visible is None else jnp.zeros_like(visible)
  return dx.astype(x.dtype), dgamma.astype(gamma.dtype), dbeta.astype(gamma.dtype), dvisible


_grn.defvjp(_grn_fwd, _grn_bwd)


class GRN(nnx.Module):
  """Global Response Normalization (see `grn`) with parameters gamma and beta, zero-initialised.

  With `visible` (broadcastable to x, 1 = visible) only visible positions enter the norm:
  FCMAE's per-sample GRN over the unmasked positions.
  """

  def __init__(self, dim: int, *, dtype):
    self.gamma = nnx.Param(jnp.zeros((dim,)))
    self.beta = nnx.Param(jnp.zeros((dim,)))
    self.dtype = dtype

  def __call__(self, x: jax.Array, *, spatial_axes=(1, 2), visible: jax.Array | None = None) -> jax.Array:
    return grn(x, self.gamma[...], self.beta[...], visible, spatial_axes, self.dtype)


def drop_path(x: jax.Array, rate, rng: jax.Array | None) -> jax.Array:
  """Per-sample stochastic depth: zero a sample's branch with prob `rate`, scale survivors.

  `rate` may be a traced scalar (scanned blocks). No-op when rng is None.
  """
  if rng is None:
    return x
  keep = 1.0 - rate
  survive = jax.random.uniform(rng, (x.shape[0],)) < keep
  scale = jnp.where(survive, 1.0 / jnp.maximum(keep, 1e-12), 0.0).astype(x.dtype)
  return x * scale.reshape((-1,) + (1,) * (x.ndim - 1))


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
  """(B, h, w, ...) -> (B, h*factor, w*factor, ...) by repetition (FCMAE's mask upsampling)."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x * Phi(x), written as PyTorch computes it: 0.5 x (1 + erf(x / sqrt 2)).

  jax.nn.gelu(approximate=False) goes through erfc, which XLA:CPU evaluates more slowly (one
  block's forward+backward at atto's first stage, batch 32: 352 instead of 387 ms).
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))
