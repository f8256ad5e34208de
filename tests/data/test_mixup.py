"""data/mixup.py: batch Mixup / CutMix (timm `Mixup`, mode='batch') with label smoothing."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import mixup

B, H, W, C, K = 8, 16, 12, 3, 10


def _batch(seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(B, H, W, C)).astype(np.float32)
  labels = rng.permutation(K)[:B].astype(np.int32)  # distinct, so lam can be read off the targets
  return jnp.asarray(images, dtype), jnp.asarray(labels)


def _smooth_np(labels, smoothing):
  off = smoothing / K
  y = np.full((len(labels), K), off, np.float64)
  y[np.arange(len(labels)), labels] = 1.0 - smoothing + off
  return y


def _lam_from_targets(targets, labels, smoothing=0.0):
  """The weight of each example's own label, undoing the smoothing; must agree over the batch."""
  off = smoothing / K
  on = 1.0 - smoothing + off
  t = np.asarray(targets)[np.arange(B), np.asarray(labels)]
  lams = (t - off) / (on - off)
  np.testing.assert_allclose(lams, lams[0], atol=1e-6)
  return float(lams[0])


def _mode(out, x):
  """'none', 'cutmix' (every pixel is its own or its partner's) or 'mixup'."""
  out, x = np.asarray(out), np.asarray(x)
  xf = x[::-1]
  if np.array_equal(out, x):
    return "none"
  if np.all((out == x) | (out == xf)):
    return "cutmix"
  return "mixup"


def _keys(n, seed=0):
  return jax.random.split(jax.random.key(seed), n)


def _mixed(mixup_alpha, cutmix_alpha, switch_prob=0.5, label_smoothing=0.0, prob=1.0):
  """mix_batch on the standard batch for 16 keys. Returns numpy (outs (16, B, H, W, C),
  targets (16, B, K)). One compile per pair of alphas (static); the other settings are traced."""
  outs, targets = _mixer(mixup_alpha, cutmix_alpha)(
    _keys(16), jnp.float32(switch_prob), jnp.float32(label_smoothing), jnp.float32(prob)
  )
  return np.asarray(outs), np.asarray(targets)


@functools.cache
def _mixer(mixup_alpha, cutmix_alpha):
  x, y = _batch()

  def one(key, switch_prob, label_smoothing, prob):
    return mixup.mix_batch(
      key,
      x,
      y,
      num_classes=K,
      mixup_alpha=mixup_alpha,
      cutmix_alpha=cutmix_alpha,
      switch_prob=switch_prob,
      label_smoothing=label_smoothing,
      prob=prob,
    )

  return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))


MIXUP = dict(mixup_alpha=0.8, cutmix_alpha=0.0)


CUTMIX = dict(mixup_alpha=0.0, cutmix_alpha=1.0)


BOTH = dict(mixup_alpha=0.8, cutmix_alpha=1.0)


NONE = dict(mixup_alpha=0.0, cutmix_alpha=0.0)


def test_one_hot_smoothed_matches_timm_formula():
  labels = jnp.array([0, 3, 9, 3])
  for s in (0.0, 0.1, 0.3):
    got = np.asarray(mixup.one_hot_smoothed(labels, K, s))
    assert got.dtype == np.float32 and got.shape == (4, K)
    np.testing.assert_allclose(got, _smooth_np(np.asarray(labels), s), rtol=0, atol=1e-7)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)
  got = np.asarray(mixup.one_hot_smoothed(labels, K, 0.1))
  assert np.isclose(got[0, 0], 0.9 + 0.01) and np.isclose(got[0, 1], 0.01)


@pytest.mark.parametrize(
  "cfg,smoothing", [(MIXUP, 0.0), (CUTMIX, 0.0), (BOTH, 0.0), (BOTH, 0.1), (NONE, 0.1)]
)
def test_targets_are_distributions_and_match_the_timm_mixture(cfg, smoothing):
  _, y = _batch()
  _, targets = _mixed(label_smoothing=smoothing, **cfg)
  ys = _smooth_np(np.asarray(y), smoothing)
  lams = []
  for t in targets:
    assert t.dtype == np.float32 and t.shape == (B, K)
    assert np.all(t >= 0)
    np.testing.assert_allclose(t.sum(-1), 1.0, atol=1e-6)
    lam = _lam_from_targets(t, y, smoothing)
    lams.append(lam)
    np.testing.assert_allclose(t, lam * ys + (1 - lam) * ys[::-1], atol=1e-6)
  if cfg is NONE:
    np.testing.assert_allclose(lams, 1.0, atol=1e-6)
  else:
    assert min(lams) < 0.9  # the targets really were mixed


def test_mixup_images_are_the_lam_blend_with_the_flipped_batch():
  x, y = _batch()
  xn = np.asarray(x)
  outs, targets = _mixed(**MIXUP)
  lams = []
  for out, t in zip(outs, targets):
    lam = _lam_from_targets(t, y)
    lams.append(lam)
    assert 0.0 < lam < 1.0
    assert _mode(out, x) == "mixup"
    np.testing.assert_allclose(out, lam * xn + (1 - lam) * xn[::-1], atol=1e-5)
  assert len(set(np.round(lams, 6))) == len(lams)  # a fresh lambda per key


def test_mixup_lambda_is_beta_distributed():
  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); a = 0.8 -> 0.0962 (uniform would be 0.083)
  fn = jax.jit(jax.vmap(lambda k: mixup.sample_mix_params(k, H, W, **MIXUP).lam))
  lam = np.asarray(fn(_keys(4000, seed=7)))
  assert np.all((lam >= 0) & (lam <= 1))
  assert abs(lam.mean() - 0.5) < 0.02
  assert abs(lam.var() - 1 / (4 * 2.6)) < 0.006


def _check_cutmix(out, x, t, y, smoothing=0.0):
  out, xn = np.asarray(out), np.asarray(x)
  xf = xn[::-1]
  lam = _lam_from_targets(t, y, smoothing)
  pasted = (out == xf) & (out != xn)  # random normal images: partners never coincide
  assert np.all((out == xn) | pasted)
  region = pasted[0, :, :, 0]
  # the same region in every example and every channel
  assert np.all(pasted == region[None, :, :, None])
  count = int(region.sum())
  if count:
    rows, cols = np.nonzero(region)
    yl, yh, xl, xh = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    assert region[yl:yh, xl:xh].all() and count == (yh - yl) * (xh - xl)  # a filled rectangle
  # correct_lam: lam is exactly 1 - area fraction
  assert count == round((1.0 - lam) * H * W)
  np.testing.assert_allclose(count / (H * W), 1.0 - lam, atol=1e-6)
  return lam, count


def test_cutmix_pastes_a_rectangle_whose_area_is_one_minus_lam():
  x, y = _batch()
  outs, targets = _mixed(**CUTMIX)
  counts = [_check_cutmix(out, x, t, y)[1] for out, t in zip(outs, targets)]
  assert sum(c > 0 for c in counts) >= 10  # not vacuous: real boxes were pasted
  assert len(set(counts)) > 4


def test_cutmix_box_and_lam_agree_with_sampled_params():
  outs, targets = _mixed(**CUTMIX)
  x, y = _batch()
  params = jax.jit(jax.vmap(lambda k: mixup.sample_mix_params(k, H, W, **CUTMIX)))(_keys(16))
  for i, (out, t) in enumerate(zip(outs, targets)):
    lam, count = _check_cutmix(out, x, t, y)
    yl, yh, xl, xh = (int(b[i]) for b in params.box)
    assert bool(params.use_cutmix[i])
    assert (yh - yl) * (xh - xl) == count
    assert np.isclose(float(params.lam[i]), lam, atol=1e-6)
    if count:
      np.testing.assert_array_equal(out[:, yl:yh, xl:xh], np.asarray(x)[::-1, yl:yh, xl:xh])


def test_rand_bbox_follows_timm():
  # cut = int(side * sqrt(1 - lam)); box [c - cut//2, c + cut//2) clipped, c uniform in [0, side).
  # lam 0.75 -> ratio 1/2 -> cuts 8 x 6 on 16 x 12; lam 1 - 49/256 -> ratio 7/16 -> cuts 7 x 5
  # (odd: timm's box is then 2 * (cut // 2) wide, not cut).
  keys = _keys(3000, seed=11)
  fn = jax.jit(jax.vmap(mixup.rand_bbox, in_axes=(0, None, None, None)), static_argnums=(1, 2))
  for lam, cut_h, cut_w in ((0.75, 8, 6), (1 - 49 / 256, 7, 5)):
    yl, yh, xl, xh = (np.asarray(b) for b in fn(keys, H, W, lam))
    for lo, hi, side, cut in ((yl, yh, H, cut_h), (xl, xh, W, cut_w)):
      half = cut // 2
      assert np.all((0 <= lo) & (lo <= hi) & (hi <= side))
      assert np.all(hi - lo <= 2 * half)
      # a centre c gives lo = max(c - half, 0), hi = min(c + half, side): recover c and check
      c = np.where(lo > 0, lo + half, hi - half)
      assert np.all((0 <= c) & (c < side))
      np.testing.assert_array_equal(np.clip(c - half, 0, side), lo)
      np.testing.assert_array_equal(np.clip(c + half, 0, side), hi)
      assert set(np.unique(c)) == set(range(side))  # centre uniform over every pixel
      assert np.any(hi - lo == 2 * half) and np.any(hi - lo < 2 * half)  # interior and clipped
  # lam 1 -> an empty box
  yl, yh, xl, xh = (np.asarray(b) for b in fn(keys, H, W, 1.0))
  assert np.all(yl == yh) and np.all(xl == xh)


@pytest.mark.parametrize(
  "cfg,expected",
  [
    (dict(BOTH, switch_prob=0.0), {"mixup"}),
    (dict(BOTH, switch_prob=1.0), {"cutmix"}),
    (BOTH, {"mixup", "cutmix"}),  # default switch_prob 0.5
    (MIXUP, {"mixup"}),  # a single alpha picks its mode
    (CUTMIX, {"cutmix"}),
    (dict(BOTH, label_smoothing=0.1), {"mixup", "cutmix"}),
  ],
)
def test_mode_selection(cfg, expected):
  x, y = _batch()
  outs, targets = _mixed(**cfg)
  modes = set()
  for out, t in zip(outs, targets):
    m = _mode(out, x)
    if m == "cutmix":
      _check_cutmix(out, x, t, y, cfg.get("label_smoothing", 0.0))
    if m == "mixup":
      lam = _lam_from_targets(t, y, cfg.get("label_smoothing", 0.0))
      np.testing.assert_allclose(
        out, lam * np.asarray(x) + (1 - lam) * np.asarray(x)[::-1], atol=1e-5
      )
    if m != "none":
      modes.add(m)
  assert modes == expected


def test_both_alphas_zero_is_identity_with_smoothed_targets():
  x, y = _batch()
  outs, targets = _mixed(label_smoothing=0.1, **NONE)
  for out, t in zip(outs, targets):
    np.testing.assert_array_equal(out, np.asarray(x))
    np.testing.assert_allclose(t, _smooth_np(np.asarray(y), 0.1), atol=1e-7)


def test_prob_draw_failure_is_identity_with_smoothed_targets():
  x, y = _batch()
  outs, targets = _mixed(prob=0.5, label_smoothing=0.1, **BOTH)
  modes = [_mode(out, x) for out in outs]
  assert "none" in modes and len(set(modes)) > 1
  for m, t in zip(modes, targets):
    lam = _lam_from_targets(t, y, 0.1)
    if m == "none":
      np.testing.assert_allclose(t, _smooth_np(np.asarray(y), 0.1), atol=1e-7)
    else:
      assert lam < 1.0


def test_jit_directly_with_static_settings_keeps_dtype():
  x, y = _batch()
  outs, targets = _mixed(label_smoothing=0.1, **BOTH)
  fn = jax.jit(functools.partial(mixup.mix_batch, num_classes=K, label_smoothing=0.1, **BOTH))
  out, t = fn(_keys(16)[1], x.astype(jnp.bfloat16), y)
  assert out.dtype == jnp.bfloat16 and t.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(t), targets[1], atol=1e-6)
  np.testing.assert_allclose(np.asarray(out, np.float32), outs[1], atol=0.05)


def test_sharded_global_batch_matches_unsharded():
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  devices = np.array(jax.devices()[:8])
  if len(devices) < 2 or B % len(devices):
    pytest.skip("needs several devices dividing the batch")
  mesh = Mesh(devices, ("data",))
  sharding = NamedSharding(mesh, P("data"))
  x, y = _batch()
  xs, ys = jax.device_put(x, sharding), jax.device_put(y, sharding)
  outs, targets = _mixed(**BOTH)
  fn = jax.jit(functools.partial(mixup.mix_batch, num_classes=K, **BOTH))
  keys = _keys(16)
  seen = set()
  for i in range(6):
    out, t = fn(keys[i], xs, ys)
    assert out.sharding.is_equivalent_to(sharding, 4)
    np.testing.assert_allclose(np.asarray(out), outs[i], atol=1e-6)
    np.testing.assert_allclose(np.asarray(t), targets[i], atol=1e-6)
    seen.add(_mode(outs[i], x))
  assert seen == {"mixup", "cutmix"}
