"""models/layers.py: both depthwise forms against a direct convolution, GRN against its
definition (value and gradient), drop path, and the per-platform kernel choice."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import layers


def _dwconv_reference(x, kernel):
  """Direct NumPy depthwise convolution, 'same' padding."""
  k = kernel.shape[0]
  p = k // 2
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  out = np.zeros_like(x)
  for i in range(k):
    for j in range(k):
      out += xp[:, i : i + x.shape[1], j : j + x.shape[2], :] * kernel[i, j, 0]
  return out


@pytest.mark.parametrize("impl", layers.DEPTHWISE_IMPLS)
def test_depthwise_forms_equal_a_direct_convolution(impl):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 9, 11, 5)).astype(np.float32)
  kernel = rng.standard_normal((7, 7, 1, 5)).astype(np.float32)
  out = layers.depthwise_conv(jnp.asarray(x), jnp.asarray(kernel), impl)
  np.testing.assert_allclose(
    out, _dwconv_reference(x.astype(np.float64), kernel), rtol=1e-5, atol=1e-5
  )


def test_drop_path_keeps_the_expectation():
  x = jnp.ones((20000, 1, 1, 1))
  out = layers.drop_path(x, 0.25, jax.random.key(0))
  np.testing.assert_allclose(np.unique(np.asarray(out)), [0.0, 1 / 0.75], rtol=1e-6)
  assert float(out.mean()) == pytest.approx(1.0, abs=0.02)


def test_grn_matches_definition_and_has_finite_gradient_at_zero():
  rng = np.random.default_rng(0)
  grn = layers.GRN(6, dtype=jnp.float32)
  grn.gamma[...] = jnp.asarray(rng.standard_normal(6), jnp.float32)
  grn.beta[...] = jnp.asarray(rng.standard_normal(6), jnp.float32)
  x = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
  x[0, :, :, 2] = 0.0  # an all-zero channel
  gx = np.sqrt((x.astype(np.float64) ** 2).sum(axis=(1, 2), keepdims=True))
  nx = gx / (gx.mean(axis=-1, keepdims=True) + 1e-6)
  expected = np.asarray(grn.gamma[...]) * (x * nx) + np.asarray(grn.beta[...]) + x
  np.testing.assert_allclose(grn(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda x: jnp.sum(grn(x) ** 2))(jnp.asarray(x))
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize(
  "shape,spatial_axes,masked,target",
  [
    ((2, 5, 4, 6), (1, 2), False, None),
    ((2, 5, 4, 6), (1, 2), True, None),
    ((2, 3, 2, 2, 6), (1, 2, 3), True, None),
    # Compiled for a GPU, the norm is a chain of sums of under 32 elements (layers._spatial_sum):
    # 111 positions: summed 3 at a time, then the 37 partial sums at once (a prime over 31)
    ((2, 37, 3, 6), (1, 2), True, "gpu"),
  ],
)
def test_grn_gradient_equals_autodiff_of_the_definition(shape, spatial_axes, masked, target):
  """GRN's hand-written gradient against jax.grad of the formula as docs/reference.md states it."""
  with layers.compiling_for(target) if target else contextlib.nullcontext():
    _check_grn_gradient(shape, spatial_axes, masked)


def _check_grn_gradient(shape, spatial_axes, masked):
  rng = np.random.default_rng(1)
  x = rng.standard_normal(shape).astype(np.float32)
  x[0, ..., 2] = 0.0  # an all-zero channel: sqrt's gradient is taken as 0 there
  x, g, gamma, beta = (
    jnp.asarray(a, jnp.float32)
    for a in (
      x,
      rng.standard_normal(shape),
      rng.standard_normal(shape[-1]),
      rng.standard_normal(shape[-1]),
    )
  )
  visible = jnp.asarray(rng.random(shape[:-1] + (1,)) > 0.4) if masked else None

  def definition(x, gamma, beta):
    sq = x * x if visible is None else x * x * visible
    s = jnp.sum(sq, axis=spatial_axes, keepdims=True)
    gx = jnp.where(s > 0, jnp.sqrt(jnp.where(s > 0, s, 1.0)), 0.0)
    nx = gx / (jnp.mean(gx, axis=-1, keepdims=True) + 1e-6)
    return jnp.sum((gamma * (x * nx) + beta + x) * g)

  def ours(x, gamma, beta):
    return jnp.sum(layers.grn(x, gamma, beta, visible, spatial_axes) * g)

  np.testing.assert_allclose(ours(x, gamma, beta), definition(x, gamma, beta), rtol=1e-5)
  for got, want in zip(
    jax.grad(ours, argnums=(0, 1, 2))(x, gamma, beta),
    jax.grad(definition, argnums=(0, 1, 2))(x, gamma, beta),
  ):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
