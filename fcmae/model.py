"""The fully convolutional masked autoencoder (FCMAE): ConvNeXt V2 encoder + light decoder.

    loss_fn, params = build("base", impl="sparse")
    mask = masking.random_mask(rng, batch, num_patches, 0.6)
    loss, pred = loss_fn(params, images, mask)        # pred (B, L, 32*32*C)

Two exact forms of one function, with the same parameters:

- impl="dense": the paper's emulation of sparse convolution on dense tensors. The stem output is
  zeroed under masked patches, the binary mask is applied before and after every depthwise conv,
  and GRN's norms see visible positions only (per sample). Every other op is per position.
- impl="sparse": the same numbers at visible positions, computed on the visible patches alone.
  Features are kept as (B, K, p, p, C): K = len_keep visible 32-pixel patches, each p x p
  positions at the stage's stride (p = 8, 4, 2, 1). Stem, LayerNorm, the MLP, GRN and the 2x2
  downsampling never mix patches, so they run on the K patches only (static shapes). Only the
  depthwise conv needs neighbours: the K patches are placed on the zero-filled dense grid for it,
  and its outputs read back at the visible positions. With mask ratio 0.6 that skips 61% of the
  pointwise work, which is nearly all of a ConvNeXt's FLOPs.

In both, masked pixels never reach a prediction: they enter only as loss targets.

Parameters: {"encoder": the ConvNeXt V2 params with num_classes=0 (load straight into
`models.convnextv2.build(variant, num_classes=0)` or, with a new head, the classifier),
"proj", "mask_token", "decoder" (a stack of `decoder_depth` blocks), "pred"}.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fcmae import masking
from models import convnextv2, layers

IMPLS = ("dense", "sparse")


@dataclasses.dataclass(frozen=True)
class DecoderOptions:
  decoder_dim: int = 512
  decoder_depth: int = 1
  norm_pix_loss: bool = True


class FCMAE(nnx.Module):
  """Encoder (ConvNeXt V2, no head) -> 1x1 proj -> mask token -> decoder blocks -> pixel head."""

  def __init__(
    self, variant: str, decoder: DecoderOptions, options: convnextv2.Options, *, rngs: nnx.Rngs
  ):
    self.encoder = convnextv2.ConvNeXtV2(variant, num_classes=0, options=options, rngs=rngs)
    dim = decoder.decoder_dim
    dtype = options.dtype
    impl = options.depthwise_impl or layers.default_depthwise_impl()
    self.proj = layers.Dense(self.encoder.dims[-1], dim, dtype=dtype, rngs=rngs)
    self.mask_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (dim,)))
    self.decoder = convnextv2.Stage(
      dim,
      decoder.decoder_depth,
      [0.0] * decoder.decoder_depth,
      0,
      impl=impl,
      dtype=dtype,
      scan=False,
      remat=options.remat,
      rngs=rngs,
    )
    # 32*32*C values per patch, in patchify's (row, column, channel) order
    self.pred = layers.Dense(dim, masking.PATCH_SIZE**2 * options.in_chans, dtype=dtype, rngs=rngs)
    self.norm_pix_loss = decoder.norm_pix_loss

  # -- encoders: both return the last stage at the visible patches' positions ------------------

  def encode_dense(self, images, mask, rng=None):
    """(B, H, W, C), mask (B, L) -> (B, h, w, C3); values under masked patches are meaningless."""
    grid = masking.grid_shape(images.shape[1:3])
    return self.encoder.stages(images, rng=rng, mask=mask.reshape(-1, *grid))[-1]

  def encode_sparse(self, images, mask, num_visible: int, rng=None):
    """(B, H, W, C), mask (B, L) -> (B, K, C3): the last stage at the K visible patches, in
    increasing patch order."""
    convnextv2.check_images(images, in_chans=self.encoder.in_chans)
    if rng is not None:
      rng = layers.example_keys(rng, images.shape[0])
    grid = masking.grid_shape(images.shape[1:3])
    layout = _VisibleLayout(mask, grid, num_visible)
    x = layout.gather(patchify(images.astype(self.encoder.dtype), grid))  # (B, K, 32, 32, C)
    x = self.encoder.stem(x)  # (B, K, 8, 8, C0)
    for i in range(4):
      if i > 0:
        x = self.encoder.downsample(i)(x)  # (B, K, p/2, p/2, Ci)

      def block_fn(block, x, rate, key):
        shortcut = x
        y = layout.gather(patchify(block.dwconv(layout.scatter(x)), grid))  # visible-only input
        y = block.mlp(y, spatial_axes=(1, 2, 3))  # GRN over K and p x p
        return shortcut + layers.drop_path(y, rate, key)

      x = self.encoder.stage(i).for_each_block(x, block_fn, rng=rng)
    return x.reshape(x.shape[0], num_visible, x.shape[-1])

  # -- decoder and loss ----------------------------------------------------------------------

  def decode(self, x, mask):
    """x (B, h, w, decoder_dim) after proj; mask (B, L) -> predicted pixels (B, L, 32*32*C)."""
    m = mask.reshape(x.shape[:3] + (1,)).astype(x.dtype)
    x = x * (1 - m) + self.mask_token[...].astype(x.dtype) * m
    x = self.decoder(x)
    pred = self.pred(x)
    return pred.reshape(pred.shape[0], -1, pred.shape[-1]).astype(jnp.float32)

  def loss(self, images, pred, mask):
    """Mean squared error per patch against the (normalized) pixels, over masked patches only."""
    target = patchify(images.astype(jnp.float32), masking.grid_shape(images.shape[1:3]))
    target = target.reshape(target.shape[0], target.shape[1], -1)  # (B, L, 32*32*C)
    if self.norm_pix_loss:
      mean = jnp.mean(target, axis=-1, keepdims=True)
      var = jnp.var(target, axis=-1, keepdims=True, ddof=1)  # unbiased, as torch
      target = (target - mean) / jnp.sqrt(var + 1e-6)
    per_patch = jnp.mean(jnp.square(pred - target), axis=-1)  # (B, L)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)

  def __call__(
    self, images, mask, *, impl: str = "dense", num_visible: int | None = None, rng=None
  ):
    grid = masking.grid_shape(images.shape[1:3])
    mask = mask.astype(jnp.float32)
    if rng is not None:
      rng = layers.example_keys(rng, images.shape[0])
    if impl == "dense":
      x = self.proj(self.encode_dense(images, mask, rng))
    elif impl == "sparse":
      visible = self.proj(self.encode_sparse(images, mask, num_visible, rng))  # (B, K, D)
      layout = _VisibleLayout(mask, grid, num_visible)
      x = layout.scatter(visible[:, :, None, None, :])  # (B, h, w, D), 0 if masked
    else:
      raise ValueError(f"Unknown FCMAE impl {impl!r}; expected one of {IMPLS}.")
    pred = self.decode(x, mask)
    return self.loss(images, pred, mask), pred


class _VisibleLayout:
  """Moves features between the visible-patch layout (B, K, p, p, C) and the dense grid.

  ids_keep (B, K): the visible patches in increasing order; slot (B, L): for each patch its row
  in the visible layout, or K (a zero row) when masked. The two moves are each other's
  transposes (a patch is visible once or not at all), so each one's gradient is the other move:
  a gather, where autodiff of a gather gives a scatter-add into zeros (a zero-filled buffer, then
  a pass that adds into it: twice the bytes).
  """

  def __init__(self, mask, grid, num_visible):
    self.grid = grid
    self.num_visible = num_visible
    order = jnp.argsort(mask, axis=1, stable=True)  # visible first, in order
    self.ids_keep = order[:, :num_visible]
    rank = jnp.cumsum(1 - mask, axis=1).astype(jnp.int32) - 1
    self.slot = jnp.where(mask > 0, num_visible, rank)

  def gather(self, patches):
    """(B, L, p, p, C) -> (B, K, p, p, C)."""
    return _keep(patches, self.ids_keep, self.slot)

  def scatter(self, x):
    """(B, K, p, p, C) -> (B, h*p, w*p, C) with zeros under masked patches."""
    return unpatchify(_place(x, self.ids_keep, self.slot), self.grid)


def _take_rows(x, rows):
  """x (B, L, ...) at rows (B, K) -> (B, K, ...)."""
  return jnp.take_along_axis(x, rows.reshape(rows.shape + (1,) * (x.ndim - 2)), axis=1)


@jax.custom_vjp
def _keep(patches, ids_keep, slot):
  """The visible patches: (B, L, p, p, C) -> (B, K, p, p, C)."""
  return _take_rows(patches, ids_keep)


@jax.custom_vjp
def _place(x, ids_keep, slot):
  """The visible patches in place among L, zeros elsewhere: (B, K, p, p, C) -> (B, L, p, p, C)."""
  return _take_rows(jnp.concatenate([x, jnp.zeros_like(x[:, :1])], axis=1), slot)


def _keep_bwd(residuals, g):
  ids_keep, slot = residuals
  return _place(g, ids_keep, slot), None, None


def _place_bwd(residuals, g):
  ids_keep, slot = residuals
  return _keep(g, ids_keep, slot), None, None


_keep.defvjp(lambda p, i, s: (_keep(p, i, s), (i, s)), _keep_bwd)
_place.defvjp(lambda x, i, s: (_place(x, i, s), (i, s)), _place_bwd)


def patchify(x, grid):
  """(B, H, W, C) -> (B, L, p, p, C), L = h * w patches in row-major order, p = H / h.

  At the pixel level p = 32 (flattened, this is the reference's (p, q, c) target order); on a
  stage's feature map p is the stage's positions per patch."""
  b, height, width, c = x.shape
  h, w = grid
  p = height // h
  x = x.reshape(b, h, p, w, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * w, p, p, c)


def unpatchify(patches, grid):
  """Inverse of patchify: (B, L, p, p, C) -> (B, h*p, w*p, C)."""
  b, _, p, _, c = patches.shape
  h, w = grid
  x = patches.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c)


# ----------------------------------------------------------------------------------------------
# Functional core.


def build(
  variant: str,
  *,
  impl: str = "dense",
  image_size: int = 224,
  seed: int = 0,
  mask_ratio: float = 0.6,
  decoder_dim: int = 512,
  decoder_depth: int = 1,
  norm_pix_loss: bool = True,
  abstract: bool = False,
  **options,
) -> tuple[Callable, dict]:
  """Returns (loss_fn, params).

  loss_fn(params, images, mask, *, rng=None) -> (loss, pred): images (B, H, W, C) normalized,
  mask (B, L) from `masking.random_mask` with this `mask_ratio` (1 = masked), pred (B, L, 32*32*C)
  float32 (C: the `in_chans` option, default 3). `rng` (a key, or one per example) turns on the encoder's drop path. `options`: the encoder's `Options` fields
  (dtype, depthwise_impl, scan, remat, drop_path_rate, in_chans). `impl="sparse"` needs every mask to keep
  exactly len_keep(L, mask_ratio) patches (static shapes); a mask that does not gives a NaN loss
  under jit and an error outside it. `abstract`: params as jax.ShapeDtypeStructs (nothing
  allocated).
  """
  if impl not in IMPLS:
    raise ValueError(f"Unknown FCMAE impl {impl!r}; expected one of {IMPLS}.")
  grid = masking.grid_shape(image_size)
  num_visible = masking.len_keep(grid[0] * grid[1], mask_ratio)
  decoder = DecoderOptions(decoder_dim, decoder_depth, norm_pix_loss)
  options = convnextv2.make_options(**options)
  graphdef, params = convnextv2.init(
    lambda: FCMAE(variant, decoder, options, rngs=nnx.Rngs(seed)), abstract
  )

  def loss_fn(params, images, mask, *, rng=None):
    if impl == "sparse":
      _check_visible_count(mask, num_visible)
    model = convnextv2.merge(graphdef, params)
    loss, pred = model(images, mask, impl=impl, num_visible=num_visible, rng=rng)
    if impl == "sparse":
      counts_ok = jnp.all(jnp.sum(1 - mask, axis=1) == num_visible)
      loss = jnp.where(counts_ok, loss, jnp.nan)
    return loss, pred

  return loss_fn, params


def _check_visible_count(mask, num_visible):
  if isinstance(mask, jax.core.Tracer):
    return
  counts = np.sum(1 - np.asarray(mask), axis=1)
  if not np.all(counts == num_visible):
    raise ValueError(
      f"impl='sparse' was built for {num_visible} visible patches per sample but the mask keeps "
      f"{sorted(set(int(c) for c in counts))}; make masks with masking.random_mask and the same "
      "mask_ratio as build()."
    )


def from_config(config, abstract: bool = False) -> tuple[Callable, dict]:
  """`build` with the fields of a pretraining config (configs/schema.py)."""
  return build(
    config.model.variant,
    impl=config.fcmae.impl,
    image_size=config.data.image_size,
    seed=config.seed,
    mask_ratio=config.fcmae.mask_ratio,
    decoder_dim=config.fcmae.decoder_dim,
    decoder_depth=config.fcmae.decoder_depth,
    norm_pix_loss=config.fcmae.norm_pix_loss,
    abstract=abstract,
    **convnextv2.config_options(config.model),
  )
