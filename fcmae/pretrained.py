"""init_from for FCMAE pretraining: continue from published or own weights.

The encoder always comes from the source (its stem adapted to config.model.in_chans as timm's
adapt_input_conv does, models/channels.py); the decoder, the projection into it, the mask token
and the pixel head come from the source too when it has them with the same shapes (an FCMAE
workdir, an official `*_fcmae.pt`), else they keep their fresh init (hf:timm/..fcmae repositories
hold the encoder only; another decoder width, or another channel count for the pixel head). One
log line says which parts were loaded, from where, and at which revision.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import traverse_util

from core.errors import UserError
from models import channels
from models import pretrained as weights_lib
from models.formats import ConversionError
from models.state_dict import check_tree


class InitFromError(UserError, ValueError):
  """init_from holds no ConvNeXt V2 encoder of the configured size."""


def _count(tree) -> int:
  return len(traverse_util.flatten_dict(tree)) if isinstance(tree, dict) else 1


def merge(fresh: dict, source: weights_lib.FcmaeWeights, in_chans: int) -> tuple[dict, str]:
  """(params, the log line): `fresh` FCMAE params with the source's encoder and the decoder parts
  whose shapes fit."""
  fresh = jax.device_get(fresh)
  encoder, adapted = channels.adapt_encoder(source.encoder, in_chans)
  try:
    check_tree(fresh["encoder"], encoder, f"the encoder of init_from {source.origin}")
  except ValueError as e:
    raise InitFromError(f"{e} (is it the configured model.variant?)") from None
  params = dict(fresh)
  params["encoder"] = jax.tree.map(lambda a: np.asarray(a, np.float32), encoder)
  loaded, kept = [f"encoder ({_count(encoder)} tensors)"], []
  for part in weights_lib.DECODER_PARTS:
    have = None if source.decoder is None else source.decoder.get(part)
    if have is None:
      kept.append(part)
      continue
    shapes = lambda tree: jax.tree.map(np.shape, tree)
    if shapes(have) != shapes(fresh[part]):
      kept.append(f"{part} (other shapes in the source)")
      continue
    params[part] = jax.tree.map(lambda a: np.asarray(a, np.float32), have)
    loaded.append(part)
  line = f"init_from {source.origin}: loaded {', '.join(loaded)}"
  if kept:
    why = "" if source.decoder else " (the source has no decoder)"
    line += f"; freshly initialised: {', '.join(kept)}{why}"
  return params, line + (f"; {adapted}" if adapted else "") + "."


def load(fresh: dict, init_from: str, in_chans: int) -> tuple[dict, str]:
  """`merge` of the weights init_from names (models/pretrained.py: read_fcmae)."""
  try:
    source = weights_lib.read_fcmae(init_from)
  except ConversionError as e:  # names the file, or not: say it is init_from's
    text = str(e) if init_from in str(e) else f"{init_from}: {e}"
    raise InitFromError(f"--config.init_from holds no ConvNeXt V2 encoder: {text}") from None
  return merge(fresh, source, in_chans)
