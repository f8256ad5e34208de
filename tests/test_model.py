"""ConvNeXt V2: the variant table, exact structure options, the fast depthwise conv, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import convnextv2, layers
from tests.helpers import perturb


def _images(batch=2, size=64, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, size, size, 3)), jnp.float32)


@pytest.mark.parametrize("variant", list(convnextv2.VARIANTS))
def test_params_and_gmacs_match_paper_table(variant):
  spec = convnextv2.VARIANTS[variant]
  n = convnextv2.count_params(convnextv2.abstract_params(variant)) / 1e6
  assert round(n, 2) == spec["params_m"]
  assert round(convnextv2.gmacs(variant), 2) == pytest.approx(spec["gmacs"], abs=0.006)


def test_gmacs_at_higher_resolution_match_paper():
  expected = {"nano": 7.22, "tiny": 13.14, "base": 45.21, "large": 101.1, "huge": 337.96}
  for variant, value in expected.items():
    assert convnextv2.gmacs(variant, 384) == pytest.approx(value, abs=0.006)
  assert convnextv2.gmacs("huge", 512) == pytest.approx(600.81, abs=0.006)


def test_table_printout_lists_every_variant(capsys):
  convnextv2.main()
  out = capsys.readouterr().out
  for variant in convnextv2.VARIANTS:
    assert variant in out
  assert "660.29" in out and "115.00" in out


def test_unknown_variant_names_the_valid_ones():
  with pytest.raises(ValueError, match="atto, femto, pico, nano, tiny, base, large, huge"):
    convnextv2.build("medium")


@pytest.mark.parametrize("shape, message", [
    ((2, 3, 64, 64), "NCHW"),
    ((2, 64, 64, 1), "3 channels"),
    ((64, 64, 3), "batch, height, width, 3"),
    ((2, 70, 64, 3), "multiples of 32"),
])
def test_bad_image_layout_says_what_it_got(shape, message):
  apply_fn, params = convnextv2.build("atto")
  with pytest.raises(ValueError, match=message) as info:
    apply_fn(params, jnp.zeros(shape))
  assert str(tuple(shape)[1]) in str(info.value)


def test_unknown_option_is_an_error():
  with pytest.raises(TypeError, match="depthwise"):
    convnextv2.build("atto", depthwise="shift")
  with pytest.raises(ValueError, match="depthwise impl"):
    convnextv2.build("atto", depthwise_impl="fft")


def test_init_follows_the_reference():
  _, params = convnextv2.build("atto", head_init_scale=0.001)
  blocks = params["stage0"]["blocks"]
  assert np.all(blocks["grn"]["gamma"] == 0) and np.all(blocks["grn"]["beta"] == 0)
  assert np.all(blocks["norm"]["scale"] == 1) and np.all(blocks["pwconv1"]["bias"] == 0)
  assert float(jnp.std(params["stage2"]["blocks"]["pwconv1"]["kernel"])) == pytest.approx(0.02, rel=0.05)
  assert float(jnp.std(params["head"]["kernel"])) == pytest.approx(0.02 * 0.001, rel=0.1)
  # Blocks of a stage are initialised independently.
  assert not np.allclose(blocks["dwconv"]["kernel"][0], blocks["dwconv"]["kernel"][1])


def _dwconv_reference(x, kernel):
  """Direct NumPy depthwise convolution, 'same' padding."""
  k = kernel.shape[0]
  p = k // 2
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  out = np.zeros_like(x)
  for i in range(k):
    for j in range(k):
      out += xp[:, i:i + x.shape[1], j:j + x.shape[2], :] * kernel[i, j, 0]
  return out


@pytest.mark.parametrize("impl", layers.DEPTHWISE_IMPLS)
def test_depthwise_forms_equal_a_direct_convolution(impl):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 9, 11, 5)).astype(np.float32)
  kernel = rng.standard_normal((7, 7, 1, 5)).astype(np.float32)
  out = layers.depthwise_conv(jnp.asarray(x), jnp.asarray(kernel), impl)
  np.testing.assert_allclose(out, _dwconv_reference(x.astype(np.float64), kernel), rtol=1e-5, atol=1e-5)


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

  np.testing.assert_allclose(layers.dense(x, kernel), jnp.dot(x, kernel), rtol=1e-6, atol=1e-6)
  for ours, theirs in zip(grads(layers.dense), grads(jnp.dot)):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_depthwise_impls_give_the_same_model():
  x = _images()
  apply_shift, params = convnextv2.build("atto", depthwise_impl="shift")
  apply_xla, _ = convnextv2.build("atto", depthwise_impl="xla")
  params = perturb(params)
  np.testing.assert_allclose(apply_shift(params, x), apply_xla(params, x), rtol=1e-4, atol=1e-5)


def test_scan_and_remat_change_nothing_but_speed():
  x = _images()
  rng = jax.random.key(3)
  apply_plain, params = convnextv2.build("atto", drop_path_rate=0.3)
  apply_scan, params_scan = convnextv2.build("atto", drop_path_rate=0.3, scan=True, remat=True)
  assert jax.tree.structure(params) == jax.tree.structure(params_scan)
  params = perturb(params)
  loss = lambda f: (lambda p: jnp.sum(f(p, x, rng=rng) ** 2))
  v1, g1 = jax.jit(jax.value_and_grad(loss(apply_plain)))(params)
  v2, g2 = jax.jit(jax.value_and_grad(loss(apply_scan)))(params)
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * float(jnp.max(jnp.abs(a)))


def test_drop_path_is_per_sample_and_off_without_rng():
  apply_fn, params = convnextv2.build("atto", drop_path_rate=0.5, num_classes=0)
  x = jnp.tile(_images(batch=1), (16, 1, 1, 1))
  apply_fn = jax.jit(apply_fn)
  det = apply_fn(params, x)
  np.testing.assert_allclose(det, apply_fn(params, x), rtol=0, atol=0)
  stoch = apply_fn(params, x, rng=jax.random.key(0))
  # Identical inputs, different per-sample drops: the samples differ from each other.
  assert float(jnp.max(jnp.abs(stoch - stoch[:1]))) > 1e-3
  # Rates rise linearly from 0 to drop_path_rate over all blocks.
  model = convnextv2.create("atto", drop_path_rate=0.5)
  rates = sum((model.stage(i).drop_rates for i in range(4)), ())
  np.testing.assert_allclose(rates, np.linspace(0, 0.5, 12), rtol=1e-6)


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


@pytest.mark.parametrize("shape,spatial_axes,masked", [
    ((2, 5, 4, 6), (1, 2), False), ((2, 5, 4, 6), (1, 2), True), ((2, 3, 2, 2, 6), (1, 2, 3), True)])
def test_grn_gradient_equals_autodiff_of_the_definition(shape, spatial_axes, masked):
  """GRN's hand-written gradient against jax.grad of the formula as REFERENCE.md states it."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal(shape).astype(np.float32)
  x[0, ..., 2] = 0.0  # an all-zero channel: sqrt's gradient is taken as 0 there
  x, g, gamma, beta = (jnp.asarray(a, jnp.float32) for a in (
      x, rng.standard_normal(shape), rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])))
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
  for got, want in zip(jax.grad(ours, argnums=(0, 1, 2))(x, gamma, beta),
                       jax.grad(definition, argnums=(0, 1, 2))(x, gamma, beta)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
  x = _images()
  apply32, params = convnextv2.build("atto")
  apply16, params16 = convnextv2.build("atto", dtype="bfloat16")
  apply32, apply16 = jax.jit(apply32), jax.jit(apply16)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params16))
  params = perturb(params)
  ref = apply32(params, x)
  out = apply16(params, x)
  assert out.dtype == jnp.float32  # the head runs in float32
  assert float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref))) < 0.05
  # Large activations: GRN and LayerNorm statistics in float32 do not overflow.
  big = apply16(params, 300.0 * x)
  assert np.all(np.isfinite(big))


def test_features_and_stage_outputs():
  x = _images(size=96)
  apply_fn, params = convnextv2.build("atto", num_classes=0)
  assert "head" not in params and "norm" not in params
  assert apply_fn(params, x).shape == (2, 320)
  stages_fn, _ = convnextv2.build("atto", num_classes=0, output="stages")
  shapes = [o.shape for o in stages_fn(params, x)]
  assert shapes == [(2, 24, 24, 40), (2, 12, 12, 80), (2, 6, 6, 160), (2, 3, 3, 320)]
  np.testing.assert_allclose(stages_fn(params, x)[-1].mean(axis=(1, 2)), apply_fn(params, x), rtol=1e-5)
