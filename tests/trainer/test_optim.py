"""trainer/optim.py: layer ids and lr scales (docs/reference.md, section 3), weight-decay mask, schedule,
and that the optimizer really applies them. Small hand-made trees keep this fast: layer ids read
only the top-level names and the stacked leading axis."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from models import convnextv2
from trainer import optim

TINY = (3, 3, 9, 3)
BASE = (3, 3, 27, 3)
ATTO = (2, 2, 6, 2)


def fake_classifier(depths, c=2, fcmae=False):
  """The classifier's tree layout (a few leaves per module, tiny channel counts)."""
  z = lambda *s: jnp.zeros(s, jnp.float32)
  tree = {
    "stem": {"conv": {"kernel": z(4, 4, 3, c), "bias": z(c)}, "norm": {"scale": z(c), "bias": z(c)}}
  }
  for i, d in enumerate(depths):
    if i:
      tree[f"downsample{i}"] = {
        "norm": {"scale": z(c), "bias": z(c)},
        "conv": {"kernel": z(2, 2, c, c), "bias": z(c)},
      }
    tree[f"stage{i}"] = {
      "blocks": {
        "dwconv": {"kernel": z(d, 7, 7, 1, c), "bias": z(d, c)},
        "norm": {"scale": z(d, c), "bias": z(d, c)},
        "pwconv1": {"kernel": z(d, c, 4 * c), "bias": z(d, 4 * c)},
        "grn": {"gamma": z(d, 4 * c), "beta": z(d, 4 * c)},
        "pwconv2": {"kernel": z(d, 4 * c, c), "bias": z(d, c)},
      }
    }
  if fcmae:
    return {
      "encoder": tree,
      "proj": {"kernel": z(c, 8), "bias": z(8)},
      "mask_token": z(8),
      "pred": {"kernel": z(8, 12), "bias": z(12)},
    }
  tree["norm"] = {"scale": z(c), "bias": z(c)}
  tree["head"] = {"kernel": z(c, 5), "bias": z(5)}
  return tree


def module_ids(ids):
  """{top-level module: its id (int) or per-block ids (list)}; checks all its leaves agree."""
  out = {}
  for name, sub in ids.items():
    leaves = [np.asarray(leaf).tolist() for leaf in jax.tree.leaves(sub)]
    assert all(leaf == leaves[0] for leaf in leaves), name
    out[name] = leaves[0]
  return out


# By hand from docs/reference.md: single = sum(depths[:i]) + j + 1 for block j of stage i,
# downsample i -> sum(depths[:i]) + 1, stem 1, norm/head sum(depths) + 1.
TINY_SINGLE = {
  "stem": 1,
  "stage0": [1, 2, 3],
  "downsample1": 4,
  "stage1": [4, 5, 6],
  "downsample2": 7,
  "stage2": [7, 8, 9, 10, 11, 12, 13, 14, 15],
  "downsample3": 16,
  "stage3": [16, 17, 18],
  "norm": 19,
  "head": 19,
}
ATTO_SINGLE = {
  "stem": 1,
  "stage0": [1, 2],
  "downsample1": 3,
  "stage1": [3, 4],
  "downsample2": 5,
  "stage2": [5, 6, 7, 8, 9, 10],
  "downsample3": 11,
  "stage3": [11, 12],
  "norm": 13,
  "head": 13,
}
BASE_GROUP = {
  "stem": 0,
  "stage0": [1, 1, 1],
  "downsample1": 2,
  "stage1": [2, 2, 2],
  "downsample2": 3,
  "stage2": [3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7, 8, 8, 8, 9, 9, 9, 10, 10, 10, 11, 11, 11],
  "downsample3": 12,
  "stage3": [12, 12, 12],
  "norm": 13,
  "head": 13,
}


@pytest.mark.parametrize(
  "depths,scheme,expected",
  [(TINY, "single", TINY_SINGLE), (ATTO, "single", ATTO_SINGLE), (BASE, "group", BASE_GROUP)],
)
def test_layer_ids_match_the_reference(depths, scheme, expected):
  ids = optim.layer_ids(fake_classifier(depths), depths, scheme)
  assert module_ids(ids) == expected
  assert ids["stage2"]["blocks"]["grn"]["gamma"].shape == (depths[2],)
  assert ids["stem"]["conv"]["kernel"].shape == ()


def test_base_single_ids_and_real_model_trees():
  ids = module_ids(optim.layer_ids(convnextv2.abstract_params("base"), BASE, "single"))
  assert ids["stage2"] == list(range(7, 34)) and ids["downsample3"] == 34 and ids["head"] == 37
  # The FCMAE encoder subtree (no norm/head) gets the classifier's ids.
  from fcmae import model as fcmae_model

  enc = jax.eval_shape(lambda: fcmae_model.build("atto", image_size=64)[1])["encoder"]
  ids = module_ids(optim.layer_ids(enc, ATTO, "single"))
  assert ids == {k: v for k, v in ATTO_SINGLE.items() if k not in ("norm", "head")}


def test_group_scheme_needs_base_depths_and_unknown_trees_raise():
  with pytest.raises(ValueError, match="group"):
    optim.layer_ids(fake_classifier(TINY), TINY, "group")
  with pytest.raises(ValueError, match="scheme"):
    optim.layer_ids(fake_classifier(TINY), TINY, "blockwise")
  with pytest.raises(ValueError, match=r"params\['encoder'\]"):  # the whole FCMAE tree
    optim.layer_ids(fake_classifier(ATTO, fcmae=True), ATTO, "single")
  with pytest.raises(ValueError, match="'proj'"):
    optim.layer_ids({"proj": {"kernel": jnp.zeros((2, 2))}}, ATTO, "single")
  with pytest.raises(ValueError, match="stacked"):  # depths that do not match the tree
    optim.layer_ids(fake_classifier(ATTO), TINY, "single")


def test_layer_decay_scales_broadcast_per_block():
  params = fake_classifier(BASE)
  scales = optim.layer_decay_scales(params, BASE, 0.6, "group")
  s = scales["stage2"]["blocks"]["dwconv"]["kernel"]
  assert s.shape == (27, 1, 1, 1, 1)
  np.testing.assert_allclose(s.ravel(), 0.6 ** (13 - (3 + np.arange(27) // 3)), rtol=1e-6)
  assert scales["head"]["kernel"] == 1.0 and scales["norm"]["scale"] == 1.0
  assert scales["stem"]["conv"]["kernel"] == pytest.approx(0.6**13)
  assert scales["stage1"]["blocks"]["norm"]["bias"].shape == (3, 1)
  jax.tree.map(lambda sc, p: np.broadcast_to(sc, p.shape), scales, params)


def test_weight_decay_mask_is_by_name_not_ndim():
  mask = optim.weight_decay_mask(fake_classifier(TINY, fcmae=True))
  blocks = mask["encoder"]["stage1"]["blocks"]
  assert blocks["pwconv1"]["kernel"] and blocks["dwconv"]["kernel"]
  assert mask["encoder"]["stem"]["conv"]["kernel"] and mask["proj"]["kernel"]
  # Stacked (depth, C) leaves are 2-D but per channel: no decay.
  assert not any(
    [
      blocks["pwconv1"]["bias"],
      blocks["norm"]["scale"],
      blocks["grn"]["gamma"],
      blocks["grn"]["beta"],
      mask["mask_token"],
      mask["proj"]["bias"],
      mask["encoder"]["downsample2"]["norm"]["scale"],
    ]
  )
  classifier = optim.weight_decay_mask(fake_classifier(TINY))
  assert classifier["head"]["kernel"] and not classifier["head"]["bias"]
  assert not classifier["norm"]["scale"]


def make_config(**overrides):
  c = ml_collections.ConfigDict(
    dict(
      batch_size=256,
      num_epochs=0,
      total_steps=110,
      warmup_epochs=0.0,
      warmup_steps=10,
      model=dict(variant="tiny"),
      optim=dict(
        base_lr=1e-3,
        min_lr=1e-5,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        grad_clip=0.0,
        layer_decay=1.0,
        layer_decay_scheme="single",
        ema_decay=0.0,
      ),
    )
  )
  for key, value in overrides.items():
    node, *path = key.split("__")
    target = c
    for p in [node, *path][:-1]:
      target = target[p]
    target[[node, *path][-1]] = value
  return c


def test_schedule_warmup_then_cosine_to_min_lr():
  s = optim.learning_rate(make_config(), steps_per_epoch=1000)
  assert float(s(0)) == 0.0
  assert float(s(5)) == pytest.approx(5e-4)
  assert float(s(10)) == pytest.approx(1e-3)
  assert float(s(60)) == pytest.approx((1e-3 + 1e-5) / 2)  # cosine midpoint
  assert float(s(110)) == pytest.approx(1e-5) and float(s(500)) == pytest.approx(1e-5)
  # lr = base_lr * batch / 256.
  assert float(optim.learning_rate(make_config(batch_size=1024), 1000)(10)) == pytest.approx(4e-3)


def test_schedule_from_epochs_and_without_warmup():
  c = make_config(total_steps=0, num_epochs=11, warmup_steps=0, warmup_epochs=1.0)
  assert optim.total_steps(c, 10) == 110 and optim.warmup_steps(c, 10) == 10
  assert float(optim.learning_rate(c, 10)(10)) == pytest.approx(1e-3)
  no_warmup = optim.learning_rate(make_config(warmup_steps=0), 1000)
  assert float(no_warmup(0)) == pytest.approx(1e-3)
  assert float(no_warmup(55)) == pytest.approx((1e-3 + 1e-5) / 2)
  # A run that ends inside its warmup only warms up (smoke tests with a small total_steps).
  short = optim.learning_rate(make_config(total_steps=4, warmup_steps=20), 1000)
  assert float(short(2)) == pytest.approx(1e-4) and float(short(4)) == pytest.approx(2e-4)
  with pytest.raises(ValueError, match="0 steps"):
    optim.learning_rate(make_config(total_steps=0, num_epochs=0), 1000)


def one_update(config, params, grads):
  tx, schedule = optim.make_optimizer(config, params, steps_per_epoch=1000)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates, schedule


def test_optimizer_applies_per_block_layer_decay():
  """Equal gradients -> Adam's first normalized step is 1 everywhere, so each update is
  -lr * scale: block j+1 moves 1/decay times as far as block j, the head moves by lr."""
  params = fake_classifier(TINY)
  grads = jax.tree.map(jnp.ones_like, params)
  c = make_config(warmup_steps=0, optim__layer_decay=0.9, optim__eps=1e-12)
  updates, schedule = one_update(c, params, grads)
  lr = float(schedule(0))
  step = np.asarray(updates["stage2"]["blocks"]["pwconv1"]["kernel"])[:, 0, 0]  # (9,) one per block
  np.testing.assert_allclose(step[:-1] / step[1:], 0.9, rtol=1e-5)
  np.testing.assert_allclose(step, -lr * 0.9 ** (19 - np.arange(7, 16)), rtol=1e-5)
  assert float(updates["head"]["kernel"][0, 0]) == pytest.approx(-lr, rel=1e-5)
  assert float(updates["stem"]["norm"]["bias"][0]) == pytest.approx(-lr * 0.9**18, rel=1e-5)
  # Without layer decay every block moves the same.
  updates, _ = one_update(make_config(warmup_steps=0, optim__eps=1e-12), params, grads)
  np.testing.assert_allclose(updates["stage2"]["blocks"]["pwconv1"]["kernel"], -lr, rtol=1e-5)


def test_weight_decay_shrinks_kernels_only_scaled_like_the_lr():
  params = jax.tree.map(lambda p: jnp.ones_like(p), fake_classifier(BASE))
  grads = jax.tree.map(jnp.zeros_like, params)
  c = make_config(
    warmup_steps=0,
    model__variant="base",
    optim__weight_decay=0.1,
    optim__layer_decay=0.6,
    optim__layer_decay_scheme="group",
  )
  updates, schedule = one_update(c, params, grads)
  new = optax.apply_updates(params, updates)
  lr = float(schedule(0))
  mask = optim.weight_decay_mask(params)
  scales = optim.layer_decay_scales(params, BASE, 0.6, "group")
  expected = jax.tree.map(
    lambda m, sc, p: np.broadcast_to(1 - lr * 0.1 * sc if m else 1.0, p.shape), mask, scales, params
  )
  jax.tree.map(lambda n, e: np.testing.assert_allclose(n, e, rtol=1e-6), new, expected)
  # Spelled out: biases / norms / GRN (stacked included) stay, kernels shrink by lr * wd * scale.
  blocks = new["stage2"]["blocks"]
  for leaf in (
    blocks["pwconv1"]["bias"],
    blocks["norm"]["scale"],
    blocks["grn"]["gamma"],
    blocks["grn"]["beta"],
    new["head"]["bias"],
  ):
    np.testing.assert_array_equal(leaf, 1.0)
  assert float(new["head"]["kernel"][0, 0]) == pytest.approx(1 - lr * 0.1, rel=1e-6)
  per_block = np.asarray(blocks["pwconv2"]["kernel"])[:, 0, 0]
  np.testing.assert_allclose(
    per_block, 1 - lr * 0.1 * 0.6 ** (13 - (3 + np.arange(27) // 3)), rtol=1e-6
  )


def test_fcmae_tree_trains_without_layer_decay_and_keeps_mask_token():
  params = jax.tree.map(jnp.ones_like, fake_classifier(ATTO, fcmae=True))
  grads = jax.tree.map(jnp.zeros_like, params)
  c = make_config(warmup_steps=0, model__variant="atto", optim__weight_decay=0.05)
  updates, schedule = one_update(c, params, grads)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["mask_token"], 1.0)
  np.testing.assert_array_equal(new["encoder"]["stage2"]["blocks"]["grn"]["gamma"], 1.0)
  shrunk = 1 - float(schedule(0)) * 0.05
  np.testing.assert_allclose(new["proj"]["kernel"], shrunk, rtol=1e-6)
  np.testing.assert_allclose(
    new["encoder"]["stage2"]["blocks"]["pwconv1"]["kernel"], shrunk, rtol=1e-6
  )


def test_gradient_clipping_is_applied_first():
  params = {"w": {"kernel": jnp.zeros((4,))}}
  g1, g2 = (
    {"w": {"kernel": jnp.array([30.0, 40.0, 0.0, 0.0])}},
    {"w": {"kernel": jnp.array([0.3, 0, 0.4, 0])}},
  )
  clipped = make_config(warmup_steps=0, optim__grad_clip=1.0)
  tx, _ = optim.make_optimizer(clipped, params, 1000)
  ref, _ = optim.make_optimizer(make_config(warmup_steps=0), params, 1000)
  state, ref_state = tx.init(params), ref.init(params)
  for g, g_clipped in [(g1, jax.tree.map(lambda x: x / 50, g1)), (g2, g2)]:
    u, state = tx.update(g, state, params)
    u_ref, ref_state = ref.update(g_clipped, ref_state, params)
    np.testing.assert_allclose(u["w"]["kernel"], u_ref["w"]["kernel"], rtol=1e-6)


def test_ema_update():
  ema, params = {"a": jnp.zeros(3)}, {"a": jnp.ones(3)}
  np.testing.assert_allclose(optim.ema_update(ema, params, 0.9)["a"], 0.1)
  np.testing.assert_allclose(optim.ema_update(ema, params, 0.0)["a"], 1.0)
  traced = jax.jit(optim.ema_update)(ema, params, jnp.float32(0.9999))
  np.testing.assert_allclose(traced["a"], 1e-4, rtol=1e-3)
