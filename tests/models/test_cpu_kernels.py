"""models/cpu_kernels.py: the CPU forms' gradients equal those of XLA's convolution and dot."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import cpu_kernels, layers


# Heights whose row groups in the kernel gradient are 10 rows, 9 rows with one zero row padded
# below (17 is prime), 14 rows, and the whole height when it is under the kernel's 7.
@pytest.mark.parametrize("height, width", [(10, 8), (17, 9), (28, 7), (3, 5)])
def test_depthwise_shift_gradient_equals_grouped_conv_gradient(height, width):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, height, width, 6)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((7, 7, 1, 6)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal((2, height, width, 6)), jnp.float32)

  def grads(impl):
    f = lambda x, k: jnp.sum(layers.depthwise_conv(x, k, impl) * cotangent)
    return jax.jit(jax.grad(f, argnums=(0, 1)))(x, kernel)

  for ours, theirs in zip(grads("shift"), grads("xla")):
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


# Two-chunk kernel gradient (even batch; batch 1 with an even number of positions), an odd
# number of positions and 2-D input (one dot).
@pytest.mark.parametrize("shape", [(4, 5, 3, 6), (1, 4, 5, 6), (3, 5, 6), (4, 6)])
def test_dense_gradients_equal_those_of_a_plain_dot(shape):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((6, 7)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal(shape[:-1] + (7,)), jnp.float32)

  def grads(fn):
    return jax.jit(jax.grad(lambda x, k: jnp.sum(fn(x, k) * cotangent), argnums=(0, 1)))(x, kernel)

  np.testing.assert_allclose(cpu_kernels.dense(x, kernel), jnp.dot(x, kernel), rtol=1e-6, atol=1e-6)
  for ours, theirs in zip(grads(cpu_kernels.dense), grads(jnp.dot)):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
