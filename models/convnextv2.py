"""ConvNeXt V2 (Woo et al., 2023) in Flax NNX, atto through huge, with a pure functional core.

    apply_fn, params = build("tiny")
    logits = apply_fn(params, images)          # images (B, H, W, 3) float32, ImageNet-normalized

`params` is a plain nested dict of arrays (orbax, sharding and weight conversion all work on it).
The blocks of each stage are stored stacked, with a leading axis of length depth, whether or not
the stage is run with `scan`, so one checkpoint layout serves every option:

    stem/{conv,norm}, downsample{1,2,3}/{norm,conv}, stage{0..3}/{dwconv,norm,pwconv1,grn,pwconv2}
    (each of shape (depth, ...)), norm, head        -- only with num_classes > 0

`python -m models.convnextv2` prints parameters and GMACs per variant (the paper's Table).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models import layers

# docs/reference.md, section 1: depths, dims, and the published size and cost figures.
VARIANTS: dict[str, dict[str, Any]] = {
  "atto": dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), params_m=3.71, gmacs=0.55),
  "femto": dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), params_m=5.23, gmacs=0.79),
  "pico": dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), params_m=9.07, gmacs=1.37),
  "nano": dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), params_m=15.62, gmacs=2.46),
  "tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), params_m=28.64, gmacs=4.47),
  "base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), params_m=88.72, gmacs=15.38),
  "large": dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), params_m=197.96, gmacs=34.40),
  "huge": dict(depths=(3, 3, 27, 3), dims=(352, 704, 1408, 2816), params_m=660.29, gmacs=115.0),
}

STEM_PATCH = 4
TOTAL_STRIDE = 32  # stem 4 x three 2x2 downsamplings


def variant_spec(variant: str) -> dict[str, Any]:
  if variant not in VARIANTS:
    raise ValueError(f"Unknown ConvNeXt V2 variant {variant!r}; valid: {', '.join(VARIANTS)}.")
  return VARIANTS[variant]


def variant_of(params) -> str:
  """The variant whose stem width and blocks per stage a params tree (with or without its head)
  has."""
  width = int(params["stem"]["conv"]["kernel"].shape[-1])
  depths = tuple(int(params[f"stage{i}"]["blocks"]["dwconv"]["bias"].shape[0]) for i in range(4))
  for name, spec in VARIANTS.items():
    if spec["dims"][0] == width and tuple(spec["depths"]) == depths:
      return name
  raise ValueError(f"No ConvNeXt V2 variant has stem width {width} and depths {depths}.")


def check_images(images: jax.Array, stride: int = TOTAL_STRIDE, in_chans: int = 3) -> None:
  """Fail early, with what was given and what is expected, on a wrong layout or size."""
  shape = tuple(images.shape)
  if len(shape) != 4:
    raise ValueError(
      f"Expected images of shape (batch, height, width, {in_chans}) (NHWC); got shape {shape}."
    )
  if shape[-1] != in_chans:
    hint = " (this looks like NCHW; transpose to NHWC)" if shape[1] == in_chans else ""
    raise ValueError(f"Expected {in_chans} channels last (NHWC); got shape {shape}{hint}.")
  if shape[1] % stride or shape[2] % stride:
    raise ValueError(
      f"Image height and width must be multiples of {stride}; got {shape[1]}x{shape[2]}."
    )


@dataclasses.dataclass(frozen=True)
class Options:
  """Everything about how the network is run, beyond its variant."""

  dtype: Any = jnp.float32  # compute dtype; params stay float32
  depthwise_impl: str | None = None  # None: layers.default_depthwise_impl()
  scan: bool = False  # lax.scan over the identical blocks of a stage
  remat: bool = False  # recompute each block in the backward pass
  drop_path_rate: float = 0.0
  head_init_scale: float = 1.0
  head_norm_eps: float = 1e-6
  in_chans: int = 3  # input channels: the stem conv's input width


class Block(nnx.Module):
  """dwconv 7x7 -> LayerNorm -> Dense(4C) -> GELU -> GRN -> Dense(C) -> drop path -> + input."""

  def __init__(self, dim: int, *, impl: str, dtype, rngs: nnx.Rngs):
    self.dwconv = layers.DepthwiseConv(dim, impl=impl, dtype=dtype, rngs=rngs)
    self.norm = layers.LayerNorm(dim, dtype=dtype)
    self.pwconv1 = layers.Dense(dim, 4 * dim, dtype=dtype, rngs=rngs)
    self.grn = layers.GRN(4 * dim, dtype=dtype)
    self.pwconv2 = layers.Dense(4 * dim, dim, dtype=dtype, rngs=rngs)

  def mlp(
    self, x: jax.Array, *, spatial_axes=(1, 2), visible: jax.Array | None = None
  ) -> jax.Array:
    """Everything after the depthwise conv; per position except GRN's norm over spatial_axes."""
    x = self.norm(x)
    x = layers.gelu(self.pwconv1(x))
    x = self.grn(x, spatial_axes=spatial_axes, visible=visible)
    return self.pwconv2(x)

  def __call__(self, x, *, drop_rate=0.0, rng=None, visible=None):
    """x (B, H, W, C). `visible` (B, H, W, 1), 1 = visible: FCMAE's dense sparse-emulation."""
    shortcut = x
    if visible is not None:
      x = x * visible.astype(x.dtype)
    x = self.dwconv(x)
    if visible is not None:
      x = x * visible.astype(x.dtype)
    x = self.mlp(x, visible=visible)
    return shortcut + layers.drop_path(x, drop_rate, rng)


class Stage(nnx.Module):
  """`depth` Blocks whose parameters are stacked along a leading axis."""

  def __init__(
    self,
    dim: int,
    depth: int,
    drop_rates: Sequence[float],
    first_index: int,
    *,
    impl: str,
    dtype,
    scan: bool,
    remat: bool,
    rngs: nnx.Rngs,
  ):
    keys = jax.random.split(rngs.params(), depth)
    make = lambda key: Block(dim, impl=impl, dtype=dtype, rngs=nnx.Rngs(params=key))
    self.blocks = nnx.vmap(make, in_axes=0, out_axes=0)(keys)
    self.depth = depth
    self.drop_rates = tuple(float(r) for r in drop_rates)
    self.first_index = first_index  # global block index, for per-block drop-path keys
    self.scan = scan
    self.remat = remat

  def for_each_block(self, x, fn: Callable, *, rng=None):
    """Runs x through the blocks: x = fn(block, x, drop_rate, block_keys) for each block in turn.

    rng: one key per example (B,) (`layers.example_keys`) or None."""
    graphdef, state = nnx.split(self.blocks)
    index = jnp.arange(self.first_index, self.first_index + self.depth)
    rates = jnp.asarray(self.drop_rates, jnp.float32)

    def body(x, per_block):
      block_state, i, rate = per_block
      block_rng = None if rng is None else layers.fold_in(rng, i)
      return fn(nnx.merge(graphdef, block_state), x, rate, block_rng), None

    if self.remat:
      body = jax.checkpoint(body)
    if self.scan:
      x, _ = jax.lax.scan(body, x, (state, index, rates))
      return x
    # One split per leaf (its gradient is one concatenation), not depth separate slices.
    per_block = jax.tree.map(lambda a: [p[0] for p in jnp.split(a, self.depth)], state)
    for j in range(self.depth):
      block_state = jax.tree.map(
        lambda parts: parts[j], per_block, is_leaf=lambda node: isinstance(node, list)
      )
      x, _ = body(x, (block_state, index[j], self.drop_rates[j]))
    return x

  def __call__(self, x, *, rng=None, visible=None):
    return self.for_each_block(
      x, lambda block, x, rate, key: block(x, drop_rate=rate, rng=key, visible=visible), rng=rng
    )


class Downsample(nnx.Module):
  """LayerNorm then 2x2 stride-2 conv."""

  def __init__(self, din: int, dout: int, *, dtype, rngs: nnx.Rngs):
    self.norm = layers.LayerNorm(din, dtype=dtype)
    self.conv = layers.PatchConv(din, dout, 2, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.conv(self.norm(x))


class Stem(nnx.Module):
  """4x4 stride-4 conv then LayerNorm."""

  def __init__(self, dout: int, *, dtype, rngs: nnx.Rngs, in_chans: int = 3):
    self.conv = layers.PatchConv(in_chans, dout, STEM_PATCH, dtype=dtype, rngs=rngs)
    self.norm = layers.LayerNorm(dout, dtype=dtype)

  def __call__(self, x):
    return self.norm(self.conv(x))


class ConvNeXtV2(nnx.Module):
  """The encoder (stem, 3 downsamplings, 4 stages) and, with num_classes > 0, the head."""

  def __init__(
    self, variant: str, num_classes: int = 1000, options: Options = Options(), *, rngs: nnx.Rngs
  ):
    spec = variant_spec(variant)
    depths, dims = spec["depths"], spec["dims"]
    impl = options.depthwise_impl or layers.default_depthwise_impl()
    dtype = options.dtype
    self.variant = variant
    self.depths, self.dims = tuple(depths), tuple(dims)
    self.num_classes = num_classes
    self.dtype = dtype

    self.in_chans = options.in_chans
    self.stem = Stem(dims[0], dtype=dtype, rngs=rngs, in_chans=options.in_chans)
    rates = [float(r) for r in np.linspace(0.0, options.drop_path_rate, sum(depths))]
    start = 0
    for i, (dim, depth) in enumerate(zip(dims, depths)):
      if i > 0:
        setattr(self, f"downsample{i}", Downsample(dims[i - 1], dim, dtype=dtype, rngs=rngs))
      setattr(
        self,
        f"stage{i}",
        Stage(
          dim,
          depth,
          rates[start : start + depth],
          start,
          impl=impl,
          dtype=dtype,
          scan=options.scan,
          remat=options.remat,
          rngs=rngs,
        ),
      )
      start += depth
    if num_classes > 0:
      self.norm = layers.LayerNorm(dims[-1], eps=options.head_norm_eps, dtype=jnp.float32)
      self.head = layers.Dense(dims[-1], num_classes, dtype=jnp.float32, rngs=rngs)
      self.head.kernel[...] = self.head.kernel[...] * options.head_init_scale
      self.head.bias[...] = self.head.bias[...] * options.head_init_scale

  def downsample(self, i: int) -> Downsample:
    return getattr(self, f"downsample{i}")

  def stage(self, i: int) -> Stage:
    return getattr(self, f"stage{i}")

  def stages(self, images, *, rng=None, mask=None) -> list[jax.Array]:
    """The four stage outputs (strides 4, 8, 16, 32), each (B, H/s, W/s, C_i).

    rng: a PRNG key, or one per example (B,): turns on drop path.
    mask: optional (B, H/32, W/32), 1 = masked: FCMAE's dense emulation of sparse convolution.
    """
    check_images(images, in_chans=self.in_chans)
    if rng is not None:
      rng = layers.example_keys(rng, images.shape[0])
    x = self.stem(images)
    visible = None
    if mask is not None:
      visible = upsample_visible(mask, x.shape[1] // mask.shape[1])
      x = x * visible.astype(x.dtype)
    outputs = []
    for i in range(4):
      if i > 0:
        x = self.downsample(i)(x)
        if visible is not None:
          visible = visible[:, ::2, ::2]
      x = self.stage(i)(x, rng=rng, visible=visible)
      outputs.append(x)
    return outputs

  def pooled(self, images, *, rng=None) -> jax.Array:
    """Global average pooled last-stage features, (B, C3), float32."""
    x = self.stages(images, rng=rng)[-1]
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

  def __call__(self, images, *, rng=None) -> jax.Array:
    if self.num_classes == 0:
      return self.pooled(images, rng=rng)
    return self.head(self.norm(self.pooled(images, rng=rng)))


def upsample_visible(mask: jax.Array, factor: int) -> jax.Array:
  """(B, h, w) mask (1 = masked) -> (B, h*factor, w*factor, 1) visibility (1 = visible)."""
  return layers.upsample_nearest(1.0 - mask.astype(jnp.float32), factor)[..., None]


# ----------------------------------------------------------------------------------------------
# Functional core.


def make_options(**options) -> Options:
  known = {f.name for f in dataclasses.fields(Options)}
  unknown = sorted(set(options) - known)
  if unknown:
    raise TypeError(f"Unknown model option(s) {unknown}; valid: {sorted(known)}.")
  if isinstance(options.get("dtype"), str):
    options["dtype"] = jnp.dtype(options["dtype"])
  return Options(**options)


def config_options(model_config) -> dict:
  """The `Options` fields of a run config's `model` section (configs/schema.py), the one place
  pretraining, finetuning, the probe and --compile_only turn a config into model options."""
  options = dict(
    dtype=model_config.dtype,
    depthwise_impl=model_config.depthwise_impl or None,
    scan=model_config.scan,
    remat=model_config.remat,
    drop_path_rate=model_config.drop_path_rate,
  )
  if "in_chans" in model_config:  # configs from before the field: 3
    options["in_chans"] = model_config.in_chans
  if "head_init_scale" in model_config:  # classifiers (finetuning) only
    options["head_init_scale"] = model_config.head_init_scale
  return options


def create(variant: str, num_classes: int = 1000, seed: int = 0, **options) -> ConvNeXtV2:
  """The NNX module itself (for code that wants methods such as `stages`)."""
  return ConvNeXtV2(variant, num_classes, make_options(**options), rngs=nnx.Rngs(seed))


def split(module: nnx.Module):
  """(graphdef, params as a plain nested dict)."""
  graphdef, state = nnx.split(module)
  return graphdef, nnx.to_pure_dict(state)


def init(make_module: Callable[[], nnx.Module], abstract: bool = False) -> tuple[Any, dict]:
  """(graphdef, params) of the module `make_module()` builds, initialised in one jitted program
  (eager initialisation dispatches every op on its own and is several times slower). With
  `abstract`, params are jax.ShapeDtypeStructs and nothing is allocated."""
  graphdef, _ = nnx.split(nnx.eval_shape(make_module))
  make_params = lambda: split(make_module())[1]
  params = jax.eval_shape(make_params) if abstract else jax.jit(make_params)()
  return graphdef, params


def merge(graphdef, params) -> nnx.Module:
  """Inverse of `split`, usable inside jit (costs nothing after tracing)."""
  return nnx.merge(graphdef, nnx.State(params))


def build(
  variant: str,
  num_classes: int = 1000,
  seed: int = 0,
  *,
  output: str = "logits",
  abstract: bool = False,
  **options,
) -> tuple[Callable, dict]:
  """Returns (apply_fn, params).

  apply_fn(params, images, *, rng=None): images (B, H, W, in_chans) NHWC float32, normalized;
  `rng` (a PRNG key, or one key per example) turns on drop path. `output`:
    "logits": (B, num_classes) (pooled features (B, C3) when num_classes=0);
    "stages": the four stage feature maps, strides 4, 8, 16, 32 (detection / segmentation).
  abstract: return params as jax.ShapeDtypeStructs, allocating nothing (when the params will
  come from a checkpoint, or `build` is traced to initialise sharded params).
  options: the fields of `Options` (dtype, depthwise_impl, scan, remat, drop_path_rate,
  head_init_scale, head_norm_eps, in_chans).
  """
  if output not in ("logits", "stages"):
    raise ValueError(f"Unknown output {output!r}; expected 'logits' or 'stages'.")
  graphdef, params = init(lambda: create(variant, num_classes, seed, **options), abstract)

  def apply_fn(params, images, *, rng=None):
    model = merge(graphdef, params)
    if output == "stages":
      return model.stages(images, rng=rng)
    return model(images, rng=rng)

  return apply_fn, params


def abstract_params(variant: str, num_classes: int = 1000, **options) -> dict:
  """Parameter shapes and dtypes without allocating them (jax.ShapeDtypeStruct leaves)."""
  return build(variant, num_classes, abstract=True, **options)[1]


# ----------------------------------------------------------------------------------------------
# Size and cost, counted from the structure the way the paper's figures were (fvcore): the
# multiply-adds of convolutions and dense layers, plus 5 per LayerNorm element and 1 per pooled
# element. Elementwise work (GELU, GRN, residual adds) is not counted.


def count_params(params) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def gmacs(variant: str, image_size: int = 224, num_classes: int = 1000, in_chans: int = 3) -> float:
  spec = variant_spec(variant)
  depths, dims = spec["depths"], spec["dims"]
  side = image_size // STEM_PATCH
  macs = (
    side * side * (STEM_PATCH * STEM_PATCH * in_chans * dims[0] + 5 * dims[0])
  )  # stem conv + norm
  for i, (dim, depth) in enumerate(zip(dims, depths)):
    if i > 0:
      macs += side * side * 5 * dims[i - 1]  # downsampling norm
      side //= 2
      macs += side * side * 4 * dims[i - 1] * dim  # 2x2 conv
    per_position = 49 * dim + 5 * dim + 2 * dim * 4 * dim  # dwconv, norm, pwconv1, pwconv2
    macs += depth * side * side * per_position
  if num_classes > 0:
    macs += side * side * dims[-1] + 5 * dims[-1] + dims[-1] * num_classes  # pool, norm, head
  return macs / 1e9


def main():
  print(f"{'variant':<8}{'params (M)':>12}{'paper':>10}{'GMACs@224':>12}{'paper':>9}")
  for name, spec in VARIANTS.items():
    n = count_params(abstract_params(name)) / 1e6
    print(f"{name:<8}{n:>12.2f}{spec['params_m']:>10.2f}{gmacs(name):>12.2f}{spec['gmacs']:>9.2f}")


if __name__ == "__main__":
  main()
