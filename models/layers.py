"""Building blocks of ConvNeXt V2 that need more care than a stock Flax layer.

- `depthwise_conv`: the 7x7 depthwise convolution in two interchangeable forms: XLA's grouped
  convolution ("xla") and the sum of shifted slices of `models/cpu_kernels.py` ("shift"), the
  default when compiling for a CPU.
- `LayerNorm`: channels-last LayerNorm with float32 statistics and a two-pass variance
  (as PyTorch computes it), whatever the compute dtype.
- `grn` / `GRN`: Global Response Normalization with a hand-written gradient (finite at all-zero
  channels) and an optional visibility mask (FCMAE's dense emulation of sparse convolution).
- `drop_path`: per-sample stochastic depth.

Which platform a program is compiled for decides two kernels (`platform()`): JAX's default
backend, or the platform named by `compiling_for` when a program is built for other devices (a
TPU slice compiled on a CPU host).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from models import cpu_kernels

DEPTHWISE_IMPLS = ("shift", "xla")

trunc_normal_02 = nnx.initializers.truncated_normal(
  stddev=0.02, lower=-2.0 / 0.02, upper=2.0 / 0.02
)

_TARGET_PLATFORM = contextvars.ContextVar("target_platform", default=None)


@contextlib.contextmanager
def compiling_for(platform: str):
  """Within this block, models are built and traced for `platform` ('cpu', 'gpu', 'tpu')."""
  token = _TARGET_PLATFORM.set(platform)
  try:
    yield
  finally:
    _TARGET_PLATFORM.reset(token)


def platform() -> str:
  """The platform being compiled for: `compiling_for`'s, else JAX's default backend."""
  return _TARGET_PLATFORM.get() or jax.default_backend()


def default_depthwise_impl(backend: str | None = None) -> str:
  """The faster depthwise form per backend: "shift" on CPU, "xla" elsewhere.

  CPU: XLA's grouped convolution is many times slower than the shifted-slice form, forward and
  backward (benchmarks/depthwise.py; docs/cpu.md has the figures).
  GPU/TPU: grouped convolutions map onto cuDNN / the TPU's conv units, so XLA's own op is used;
  the shifted form would also need far more TPU memory for its temporaries (docs/tpu.md).
  """
  backend = backend or platform()
  return "shift" if backend == "cpu" else "xla"


def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x @ kernel over the last axis of x; on CPU with `cpu_kernels.dense`'s gradient."""
  return cpu_kernels.dense(x, kernel) if platform() == "cpu" else jnp.dot(x, kernel)


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
    return cpu_kernels.depthwise_shift(x, kernel[:, :, 0, :])
  if impl == "xla":
    p = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(1, 1),
      padding=((p, p), (p, p)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=x.shape[-1],
    )
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
    return depthwise_conv(x, self.kernel[...].astype(self.dtype), self.impl) + self.bias[
      ...
    ].astype(self.dtype)


class Dense(nnx.Module):
  """x @ kernel + bias over the last axis; kernel (in, out). Any number of leading axes."""

  def __init__(self, din: int, dout: int, *, dtype, rngs: nnx.Rngs):
    self.kernel = nnx.Param(trunc_normal_02(rngs.params(), (din, dout)))
    self.bias = nnx.Param(jnp.zeros((dout,)))
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = matmul(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
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
    return matmul(x, kernel) + self.bias[...].astype(self.dtype)


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


def grn(
  x: jax.Array,
  gamma: jax.Array,
  beta: jax.Array,
  visible: jax.Array | None = None,
  spatial_axes: tuple[int, ...] = (1, 2),
  out_dtype=None,
) -> jax.Array:
  """Global Response Normalization, out = gamma * (x * Nx) + beta + x, with its own gradient.

  Gx is the L2 norm of each channel over `spatial_axes` of one sample (only where `visible`, if
  given), Nx = Gx / (mean_C Gx + 1e-6); statistics in float32 whatever x's dtype. The gradient of
  sqrt is taken as 0 at an all-zero channel (finite, and exact everywhere else).

  The gradient is written out by hand (`_grn_bwd`): one pass over x and the incoming gradient
  gives every per-sample sum it needs, and the gamma and beta gradients come from those sums
  instead of two more passes over the full tensor, which is what autodiff produced (a few percent
  of a training step on CPU, and fewer XLA temporaries; docs/cpu.md has the figures).
  """
  if visible is not None:
    visible = visible.astype(jnp.promote_types(x.dtype, jnp.float32))
  return _grn(x, gamma, beta, visible, tuple(spatial_axes), jnp.dtype(out_dtype or x.dtype))


def _spatial_sum(a: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """jnp.sum(a, axes, keepdims=True) over contiguous axes; compiled for a GPU, as a chain of sums
  of fewer than 32 elements each.

  XLA:GPU lays out the operand of a reduction over 32 or more elements so that the reduced axes
  are minor (layout_assignment.cc, PropagateReductionLayoutToOperand). Over a block's positions,
  that is a channels-major copy of the widest tensor, and in GRN's gradient the layout spread
  through GELU's gradient to the matrix products, as transposes forth and back (docs/
  benchmarks.md). A chain of small sums (optimization barriers keep XLA from merging them back
  into one) leaves every tensor channels-last. Same sum, another order of its additions.
  """
  first, last = min(axes), max(axes)
  if platform() != "gpu":
    return jnp.sum(a, axis=axes, keepdims=True)
  if tuple(axes) != tuple(range(first, last + 1)):
    raise ValueError(f"_spatial_sum needs contiguous axes; got {axes}.")
  shape = a.shape
  a = a.reshape(shape[:first] + (-1,) + shape[last + 1 :])
  while a.shape[first] > 1:
    n = a.shape[first]
    factor = n if n < 32 else next((f for f in range(31, 1, -1) if n % f == 0), n)
    a = a.reshape(a.shape[:first] + (n // factor, factor) + a.shape[first + 1 :])
    a = jax.lax.optimization_barrier(jnp.sum(a, axis=first + 1))
  return a.reshape(shape[:first] + (1,) * len(axes) + shape[last + 1 :])


def _grn_statistics(x32, visible, spatial_axes):
  sq = jnp.square(x32)
  if visible is not None:
    sq = sq * visible
  gx = _safe_sqrt(_spatial_sum(sq, spatial_axes))  # (B, 1.., C)
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
  g_dot_x = _spatial_sum(g32 * x32, spatial_axes)
  g_sum = _spatial_sum(g32, spatial_axes)
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

  def __call__(
    self, x: jax.Array, *, spatial_axes=(1, 2), visible: jax.Array | None = None
  ) -> jax.Array:
    return grn(x, self.gamma[...], self.beta[...], visible, spatial_axes, self.dtype)


def example_keys(rng: jax.Array, batch_size: int) -> jax.Array:
  """One PRNG key per example, (B,): `rng` itself when it already is one key per example, else
  `rng` split. Randomness drawn from per-example keys does not depend on how a batch is cut
  into micro-batches, devices or processes."""
  if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):  # raw uint32 keys, (2,) or (B, 2)
    rng = jax.random.wrap_key_data(rng)
  if rng.ndim == 0:
    return jax.random.split(rng, batch_size)
  if rng.shape != (batch_size,):
    raise ValueError(
      f"Expected one PRNG key or {batch_size} (one per example); got keys of shape {rng.shape}."
    )
  return rng


def fold_in(keys: jax.Array, data: int | jax.Array) -> jax.Array:
  """`jax.random.fold_in` of every key of a (B,) key array."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)


def drop_path(x: jax.Array, rate, keys: jax.Array | None) -> jax.Array:
  """Per-sample stochastic depth: zero a sample's branch with prob `rate`, scale survivors.

  keys: one PRNG key per sample (B,) (`example_keys`) or one key for the batch, or None for
  no-op. `rate` may be a traced scalar (scanned blocks).
  """
  if keys is None:
    return x
  keys = example_keys(keys, x.shape[0])
  keep = 1.0 - rate
  survive = jax.vmap(jax.random.uniform)(keys) < keep
  scale = jnp.where(survive, 1.0 / jnp.maximum(keep, 1e-12), 0.0).astype(x.dtype)
  return x * scale.reshape((-1,) + (1,) * (x.ndim - 1))


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
  """(B, h, w, ...) -> (B, h*factor, w*factor, ...) by repetition (FCMAE's mask upsampling)."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x * Phi(x), written as PyTorch computes it: 0.5 x (1 + erf(x / sqrt 2)).

  jax.nn.gelu(approximate=False) goes through erfc, which XLA:CPU evaluates more slowly
  (docs/cpu.md has the figures).
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))
