"""Classification losses and metrics: soft-target cross-entropy and top-k correctness."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def soft_cross_entropy(logits, targets) -> jax.Array:
  """(B, K) logits and (B, K) target distributions -> (B,) float32 `sum(-t * log_softmax(z))`."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(targets.astype(jnp.float32) * logp, axis=-1)


def topk_correct(logits, labels, k: int) -> jax.Array:
  """(B,) float32: 1 where the label is among the k largest logits (`lax.top_k`, like torch.topk)."""
  k = min(int(k), logits.shape[-1])
  _, idx = jax.lax.top_k(logits, k)
  return jnp.any(idx == labels[:, None], axis=-1).astype(jnp.float32)
