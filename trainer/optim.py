"""Optimizer for FCMAE pretraining and finetuning: AdamW, warmup + cosine, layer-wise lr decay, EMA.

    tx, schedule = make_optimizer(config, params, steps_per_epoch)
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ema_params = ema_update(ema_params, params, config.optim.ema_decay)   # finetuning, every step

Works on the classifier tree of `models.convnextv2.build` and on the FCMAE tree of
`fcmae/model.py` (no layer decay there). Stage blocks are stored stacked along a leading axis
of length depth, so per-block quantities (layer ids, lr scales) are vectors along that axis.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import convnextv2

GROUP_DEPTHS = (3, 3, 27, 3)
SCHEMES = ("single", "group")

# ----------------------------------------------------------------------------------------------
# Learning-rate schedule.


def peak_learning_rate(config) -> float:
  """lr = base_lr * batch_size / 256 (the paper's linear scaling rule)."""
  return config.optim.base_lr * config.batch_size / 256


def total_steps(config, steps_per_epoch: int) -> int:
  """config.total_steps if > 0, else num_epochs * steps_per_epoch."""
  if config.total_steps > 0:
    return int(config.total_steps)
  return int(config.num_epochs * steps_per_epoch)


def warmup_steps(config, steps_per_epoch: int) -> int:
  """config.warmup_steps if > 0, else round(warmup_epochs * steps_per_epoch)."""
  if config.warmup_steps > 0:
    return int(config.warmup_steps)
  return int(round(config.warmup_epochs * steps_per_epoch))


def learning_rate(config, steps_per_epoch: int) -> optax.Schedule:
  """Per-step lr: linear warmup from 0 to the peak, then cosine from the peak to min_lr.

  step 0 -> 0 (peak without warmup), step warmup -> peak, step total -> min_lr (held after).
  A run that ends within its warmup (e.g. a smoke test with a small total_steps override) gets
  just the linear warmup, with a warning.
  """
  total = total_steps(config, steps_per_epoch)
  warmup = warmup_steps(config, steps_per_epoch)
  peak, min_lr = peak_learning_rate(config), float(config.optim.min_lr)
  if total <= 0:
    raise ValueError(f"The run has {total} steps; set num_epochs or total_steps.")
  if warmup >= total:
    logging.warning(
      "Warmup (%d steps) is not shorter than the run (%d steps): the lr only warms up.",
      warmup,
      total,
    )
    return optax.linear_schedule(0.0, peak, warmup)
  if warmup == 0:
    return optax.cosine_decay_schedule(peak, total, alpha=min_lr / peak if peak else 0.0)
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=min_lr)


# ----------------------------------------------------------------------------------------------
# Which parameters get weight decay.


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def weight_decay_mask(params) -> Any:
  """True for weight matrices / conv kernels (leaf name `kernel`), False for everything else.

  Biases, LayerNorm scales, GRN gamma/beta and the mask token are logically 1-D (per channel) and
  get no decay, as in the reference. The decision is by name, not ndim: stacked block leaves carry
  a leading depth axis, so a stacked bias is (depth, C), 2-D, yet still a bias.
  """
  return jax.tree_util.tree_map_with_path(lambda path, _: _names(path)[-1] == "kernel", params)


# ----------------------------------------------------------------------------------------------
# Layer-wise lr decay (docs/reference.md, section 3): scale = decay ** (num_layers + 1 - layer_id).


def num_layers(depths: Sequence[int], scheme: str) -> int:
  _check_scheme(depths, scheme)
  return 12 if scheme == "group" else sum(depths)


def _check_scheme(depths, scheme):
  if scheme not in SCHEMES:
    raise ValueError(f"Unknown layer-decay scheme {scheme!r}; valid: {SCHEMES}.")
  if scheme == "group" and tuple(depths) != GROUP_DEPTHS:
    raise ValueError(
      f"The 'group' layer-decay scheme is defined for depths {GROUP_DEPTHS} "
      f"(base/large/huge) only; got {tuple(depths)}. Use 'single'."
    )


def _module_ids(name: str, depths: Sequence[int], scheme: str):
  """Layer id of a top-level module: an int, or an int vector (depth,) for stage{i}."""
  head = num_layers(depths, scheme) + 1
  if name in ("norm", "head"):
    return head
  if name == "stem":
    return 0 if scheme == "group" else 1
  if name == "encoder":
    raise ValueError(
      "Layer ids are defined for the classifier tree; for an FCMAE tree pass its "
      "params['encoder'] (the decoder has no layer-wise lr decay)."
    )
  m = re.fullmatch(r"(downsample|stage)(\d)", name)
  if not m or int(m.group(2)) >= len(depths) or name == "downsample0":
    raise ValueError(
      f"No layer id for top-level parameter {name!r}; expected the ConvNeXt V2 "
      "classifier tree (or an FCMAE 'encoder' subtree): stem, downsample1..3, "
      "stage0..3, norm, head."
    )
  kind, i = m.group(1), int(m.group(2))
  if scheme == "single":
    first = sum(depths[:i]) + 1
    return first if kind == "downsample" else first + np.arange(depths[i])
  if kind == "downsample":
    return {1: 2, 2: 3, 3: 12}[i]
  if i == 2:
    return 3 + np.arange(depths[2]) // 3
  return {0: 1, 1: 2, 3: 12}[i] + np.zeros(depths[i], int)


def layer_ids(params, depths: Sequence[int], scheme: str = "single") -> Any:
  """Pytree like `params` of int32 arrays: shape (depth,) under stage{i} (one id per stacked
  block), shape () elsewhere. scheme 'single' or 'group' (depths (3, 3, 27, 3) only)."""
  _check_scheme(depths, scheme)
  depths = tuple(int(d) for d in depths)

  def leaf_ids(path, leaf):
    names = _names(path)
    ids = np.asarray(_module_ids(names[0], depths, scheme), np.int32)
    if ids.ndim and (len(leaf.shape) == 0 or leaf.shape[0] != ids.shape[0]):
      raise ValueError(
        f"{'/'.join(names)} has shape {tuple(leaf.shape)}; expected a leading axis "
        f"of {ids.shape[0]} stacked blocks."
      )
    return ids

  return jax.tree_util.tree_map_with_path(leaf_ids, params)


def layer_decay_scales(params, depths: Sequence[int], decay: float, scheme: str = "single") -> Any:
  """Pytree like `params` of float32 lr multipliers decay ** (num_layers + 1 - layer_id), each
  broadcastable to its leaf: shape (depth, 1, 1, ...) for stacked block leaves, () otherwise."""
  top = num_layers(depths, scheme) + 1

  def scale(ids, leaf):
    s = np.asarray(float(decay) ** (top - ids.astype(np.float64)), np.float32)
    return s.reshape(s.shape + (1,) * (len(leaf.shape) - 1)) if s.ndim else s

  return jax.tree.map(scale, layer_ids(params, depths, scheme), params)


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update by its entry of `scales` (a pytree of arrays broadcastable to the
  updates). After AdamW, whose decoupled weight decay is part of its update, this scales the
  gradient step and the decay alike, as a per-parameter-group lr does in the reference."""

  def update(updates, params=None):
    del params
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales)

  return optax.stateless(update)


# ----------------------------------------------------------------------------------------------
# The optimizer.


def make_optimizer(config, params, steps_per_epoch: int):
  """Returns (tx, schedule): [clip by global norm] -> AdamW (decay on kernels only, lr schedule)
  -> [per-parameter layer-decay lr scales, when config.optim.layer_decay != 1].

  `params` may be arrays or jax.ShapeDtypeStructs (only the structure and shapes are read).
  """
  o = config.optim
  schedule = learning_rate(config, steps_per_epoch)
  parts = []
  if o.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(o.grad_clip))
  parts.append(
    optax.adamw(
      schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=weight_decay_mask
    )
  )
  layer_decay = o.layer_decay
  if layer_decay != 1.0:
    depths = convnextv2.variant_spec(config.model.variant)["depths"]
    parts.append(
      scale_by_tree(layer_decay_scales(params, depths, layer_decay, o.layer_decay_scheme))
    )
  return optax.chain(*parts), schedule


# ----------------------------------------------------------------------------------------------
# Exponential moving average of the parameters (finetuning).


def ema_update(ema_params, params, decay):
  """ema <- decay * ema + (1 - decay) * params, via optax.incremental_update.

  Called once per optimizer step with the freshly updated params (the reference's timm ModelEma:
  a fixed decay, 0.9999, no warmup or bias correction; EMA starts from the initial params).
  `decay` may be a traced scalar; decay 0 returns `params`.
  """
  return optax.incremental_update(params, ema_params, 1.0 - decay)
