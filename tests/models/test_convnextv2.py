"""models/convnextv2.py: the variant table against the paper, structure options, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import convnextv2
from tests.helpers import perturb


def _images(batch=2, size=64, seed=0):
  return jnp.asarray(
    np.random.default_rng(seed).standard_normal((batch, size, size, 3)), jnp.float32
  )


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


@pytest.mark.parametrize(
  "shape, message",
  [
    ((2, 3, 64, 64), "NCHW"),
    ((2, 64, 64, 1), "3 channels"),
    ((64, 64, 3), "batch, height, width, 3"),
    ((2, 70, 64, 3), "multiples of 32"),
  ],
)
def test_bad_image_layout_says_what_it_got(shape, message):
  apply_fn, params = convnextv2.build("atto", abstract=True)  # the check runs while tracing
  with pytest.raises(ValueError, match=message) as info:
    jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct(shape, jnp.float32))
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
  assert float(jnp.std(params["stage2"]["blocks"]["pwconv1"]["kernel"])) == pytest.approx(
    0.02, rel=0.05
  )
  assert float(jnp.std(params["head"]["kernel"])) == pytest.approx(0.02 * 0.001, rel=0.1)
  # Blocks of a stage are initialised independently.
  assert not np.allclose(blocks["dwconv"]["kernel"][0], blocks["dwconv"]["kernel"][1])


def test_depthwise_impls_give_the_same_model():
  x = _images()
  apply_shift, params = convnextv2.build("atto", depthwise_impl="shift")
  apply_xla, _ = convnextv2.build("atto", depthwise_impl="xla")
  params = perturb(params)
  np.testing.assert_allclose(
    jax.jit(apply_shift)(params, x), jax.jit(apply_xla)(params, x), rtol=1e-4, atol=1e-5
  )


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
  pooled = jax.jit(apply_fn)(params, x)
  assert pooled.shape == (2, 320)
  stages_fn, _ = convnextv2.build("atto", num_classes=0, output="stages", abstract=True)
  stages = jax.jit(stages_fn)(params, x)
  assert [o.shape for o in stages] == [
    (2, 24, 24, 40),
    (2, 12, 12, 80),
    (2, 6, 6, 160),
    (2, 3, 3, 320),
  ]
  np.testing.assert_allclose(stages[-1].mean(axis=(1, 2)), pooled, rtol=1e-5)
