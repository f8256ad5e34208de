"""fcmae/model.py: the visible-only form equals the dense emulation (values, gradients, drop path,
scan), masked pixels never reach a prediction, the loss against NumPy, encoder compatibility."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fcmae import masking
from fcmae import model as fcmae_model
from models import convnextv2
from tests.helpers import perturb


def _images(batch, size, seed=0):
  return jnp.asarray(
    np.random.default_rng(seed).standard_normal((batch, size, size, 3)), jnp.float32
  )


def _pixel_mask(mask, grid, patch=32):
  """(B, L) patch mask -> (B, H, W, 1) pixel mask, by repetition (independent of the model's own)."""
  m = np.asarray(mask).reshape(-1, *grid)
  return np.repeat(np.repeat(m, patch, axis=1), patch, axis=2)[..., None]


def test_bad_arguments_are_clear_errors():
  with pytest.raises(ValueError, match="not divisible by the patch size 32"):
    fcmae_model.build("atto", image_size=200)
  with pytest.raises(ValueError, match="impl"):
    fcmae_model.build("atto", impl="minkowski")
  loss_fn, params = fcmae_model.build("atto", impl="sparse", image_size=64)
  with pytest.raises(ValueError, match="visible patches"):
    loss_fn(params, _images(2, 64), jnp.zeros((2, 4)))


def _dense_and_sparse(variant, size, batch=2):
  grid = masking.grid_shape(size)
  dense_fn, params = fcmae_model.build(variant, impl="dense", image_size=size)
  sparse_fn, _ = fcmae_model.build(variant, impl="sparse", image_size=size)
  mask = masking.random_mask(jax.random.key(4), batch, grid[0] * grid[1], 0.6)
  return dense_fn, sparse_fn, perturb(params), _images(batch, size), mask


# 2x2 patches and the paper's 7x7 at 224 (3x3: the gradient and drop-path tests below).
@pytest.mark.parametrize("variant, size", [("atto", 64), ("atto", 224)])
def test_sparse_equals_dense(variant, size):
  dense_fn, sparse_fn, params, images, mask = _dense_and_sparse(variant, size)
  loss_d, pred_d = jax.jit(dense_fn)(params, images, mask)
  loss_s, pred_s = jax.jit(sparse_fn)(params, images, mask)
  np.testing.assert_allclose(loss_s, loss_d, rtol=1e-5)
  np.testing.assert_allclose(pred_s, pred_d, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(pred_d))))


def test_sparse_gradients_equal_dense_gradients():
  dense_fn, sparse_fn, params, images, mask = _dense_and_sparse("atto", 96)
  grad_d = jax.jit(jax.grad(lambda p: dense_fn(p, images, mask)[0]))(params)
  grad_s = jax.jit(jax.grad(lambda p: sparse_fn(p, images, mask)[0]))(params)
  for (path, gd), gs in zip(jax.tree_util.tree_leaves_with_path(grad_d), jax.tree.leaves(grad_s)):
    scale = float(jnp.max(jnp.abs(gd))) + 1e-12
    assert float(jnp.max(jnp.abs(gd - gs))) / scale < 1e-4, jax.tree_util.keystr(path)


def test_sparse_equals_dense_with_drop_path_and_scan():
  size = 96
  dense_fn, params = fcmae_model.build("atto", impl="dense", image_size=size, drop_path_rate=0.4)
  sparse_fn, _ = fcmae_model.build(
    "atto", impl="sparse", image_size=size, drop_path_rate=0.4, scan=True
  )
  images = _images(4, size)
  mask = masking.random_mask(jax.random.key(5), 4, 9, 0.6)
  rng = jax.random.key(6)
  loss_d, pred_d = jax.jit(dense_fn)(params, images, mask, rng=rng)
  loss_s, pred_s = jax.jit(sparse_fn)(params, images, mask, rng=rng)
  np.testing.assert_allclose(loss_s, loss_d, rtol=1e-5)
  no_drop, _ = jax.jit(dense_fn)(params, images, mask)
  assert abs(float(no_drop) - float(loss_d)) > 1e-6  # drop path was really on


@pytest.mark.parametrize("impl", fcmae_model.IMPLS)
def test_masked_pixels_never_influence_predictions(impl):
  size = 96
  loss_fn, params = fcmae_model.build("atto", impl=impl, image_size=size)
  loss_fn = jax.jit(loss_fn)
  params = perturb(params)
  images = _images(2, size)
  mask = masking.random_mask(jax.random.key(7), 2, 9, 0.6)
  pixel_mask = _pixel_mask(mask, (3, 3))
  noise = 100.0 * _images(2, size, seed=9)
  corrupted = images * (1 - pixel_mask) + noise * pixel_mask
  _, pred = loss_fn(params, images, mask)
  _, pred_corrupted = loss_fn(params, corrupted, mask)
  np.testing.assert_allclose(pred_corrupted, pred, rtol=1e-5, atol=1e-5)
  # ... while the visible pixels do matter.
  _, pred_visible_changed = loss_fn(params, images * pixel_mask + noise * (1 - pixel_mask), mask)
  assert float(jnp.max(jnp.abs(pred_visible_changed - pred))) > 1e-3


def _numpy_loss(images, pred, mask, norm_pix):
  b, height, width, _ = images.shape
  h, w = height // 32, width // 32
  target = images.reshape(b, h, 32, w, 32, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, h * w, 3072)
  if norm_pix:
    mean = target.mean(-1, keepdims=True)
    var = target.var(-1, ddof=1, keepdims=True)
    target = (target - mean) / np.sqrt(var + 1e-6)
  per_patch = ((pred - target) ** 2).mean(-1)
  return (per_patch * mask).sum() / mask.sum()


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_matches_numpy(norm_pix):
  loss_fn, params = fcmae_model.build("atto", impl="sparse", image_size=64, norm_pix_loss=norm_pix)
  images = _images(3, 64)
  mask = masking.random_mask(jax.random.key(8), 3, 4, 0.6)
  loss, pred = jax.jit(loss_fn)(params, images, mask)
  assert pred.shape == (3, 4, 3072)
  expected = _numpy_loss(
    np.asarray(images, np.float64),
    np.asarray(pred, np.float64),
    np.asarray(mask, np.float64),
    norm_pix,
  )
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_encoder_params_load_into_the_classifier():
  size = 64
  loss_fn, params = fcmae_model.build("atto", impl="dense", image_size=size, decoder_dim=64)
  _, features_params = convnextv2.build("atto", num_classes=0, abstract=True)
  assert jax.tree.structure(params["encoder"]) == jax.tree.structure(features_params)
  assert jax.tree.map(jnp.shape, params["encoder"]) == jax.tree.map(jnp.shape, features_params)
  # With nothing masked the FCMAE encoder is the plain network.
  encoder = params["encoder"]
  stages_fn, _ = convnextv2.build("atto", num_classes=0, output="stages", abstract=True)
  graphdef, _ = convnextv2.init(
    lambda: fcmae_model.FCMAE(
      "atto", fcmae_model.DecoderOptions(64), convnextv2.Options(), rngs=nnx.Rngs(0)
    ),
    abstract=True,
  )
  model = convnextv2.merge(graphdef, params)
  images = _images(2, size)
  out = jax.jit(lambda x: model.encode_dense(x, jnp.zeros((2, 4))))(images)
  np.testing.assert_allclose(out, jax.jit(stages_fn)(encoder, images)[-1], rtol=1e-5, atol=1e-6)
  # And the classifier takes the encoder plus a new head.
  classify, cls_params = convnextv2.build("atto", num_classes=10, abstract=True)
  cls_params = {**cls_params, **encoder}
  assert jax.eval_shape(classify, cls_params, images).shape == (2, 10)


def test_decoder_options_and_parameter_layout():
  _, params = fcmae_model.build(
    "atto", image_size=64, decoder_dim=96, decoder_depth=2, abstract=True
  )
  assert params["mask_token"].shape == (96,)
  assert params["proj"]["kernel"].shape == (320, 96)
  assert params["decoder"]["blocks"]["pwconv1"]["kernel"].shape == (2, 96, 384)
  assert params["pred"]["kernel"].shape == (96, 3072)


@pytest.mark.parametrize("in_chans", [1, 4])
def test_c_channels_predict_32x32xc_values_per_patch(in_chans):
  """The pixel head predicts 32*32*C values per patch and the loss compares them with the
  patches of the C-channel images; the visible-only form still equals the dense one."""
  size, batch = 64, 2
  grid = masking.grid_shape(size)
  dense_fn, params = fcmae_model.build("atto", impl="dense", image_size=size, in_chans=in_chans)
  sparse_fn, _ = fcmae_model.build(
    "atto", impl="sparse", image_size=size, in_chans=in_chans, mask_ratio=0.5
  )
  assert params["encoder"]["stem"]["conv"]["kernel"].shape == (4, 4, in_chans, 40)
  images = jnp.asarray(
    np.random.default_rng(0).standard_normal((batch, size, size, in_chans)), jnp.float32
  )
  mask = masking.random_mask(jax.random.key(0), batch, grid[0] * grid[1], 0.5)
  dense_fn, sparse_fn = jax.jit(dense_fn), jax.jit(sparse_fn)
  loss, pred = dense_fn(params, images, mask)
  assert pred.shape == (batch, grid[0] * grid[1], 32 * 32 * in_chans)
  # The loss against NumPy: per-patch normalized targets in (row, column, channel) order.
  x = np.asarray(images).reshape(batch, grid[0], 32, grid[1], 32, in_chans)
  target = x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, -1, 32 * 32 * in_chans)
  target = (target - target.mean(-1, keepdims=True)) / np.sqrt(
    target.var(-1, ddof=1, keepdims=True) + 1e-6
  )
  per_patch = ((np.asarray(pred) - target) ** 2).mean(-1)
  m = np.asarray(mask)
  np.testing.assert_allclose(loss, (per_patch * m).sum() / m.sum(), rtol=1e-5)
  if in_chans == 4:  # the visible-only form (its C = 3 equality: the tests above)
    sparse_loss, _ = sparse_fn(params, images, mask)
    np.testing.assert_allclose(sparse_loss, loss, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=f"Expected {in_chans} channels last"):
    dense_fn(params, images[..., :1] if in_chans > 1 else jnp.tile(images, 3), mask)
