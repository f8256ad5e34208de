"""Evaluation of a classifier: top-1 / top-5 over the whole validation split, exactly once on
any number of processes (the last partial batch is padded and masked), for the params and their
EMA."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from classify import metrics
from core import cost, sharding
from data import info as data_info
from data import on_device


class Evaluator:
  """Top-1 / top-5 over the whole validation split, for the params and (if kept) their EMA."""

  def __init__(self, config, apply_fn, local_batch: int, stats):
    self.config = config
    self.local_batch = local_batch

    def counts(params, batch):
      logits = apply_fn(params, on_device.normalize(batch["image"], stats.mean, stats.std))
      weight = batch["mask"]
      return {
        "top1": jnp.sum(metrics.topk_correct(logits, batch["label"], 1) * weight),
        "top5": jnp.sum(metrics.topk_correct(logits, batch["label"], 5) * weight),
        "num_examples": jnp.sum(weight),
      }

    self._counts = jax.jit(counts)

  def compile(self, run, compiler_options: dict | None = None) -> cost.StepCost:
    """The evaluation step compiled ahead of time for a run's devices (--compile_only)."""
    batch = data_info.abstract_batch(self.config, run.batch_sharding)
    batch["mask"] = jax.ShapeDtypeStruct(
      batch["label"].shape, jnp.float32, sharding=run.batch_sharding
    )
    return cost.compile_step(
      self._counts,
      run.abstract_state["params"],
      batch,
      global_batch=batch["label"].shape[0],
      compiler_options=compiler_options,
    )

  def __call__(self, state, step) -> dict:
    from data import eval_pipeline  # TensorFlow: only where data is read

    config = self.config
    batch_sharding = sharding.batch_sharding(_mesh_of(state))
    totals: dict[str, float] = {}
    variants = [("", state["params"])]
    if "ema_params" in state:
      variants.append(("ema_", state["ema_params"]))
    batches = eval_pipeline.eval_iterator(
      config.data.name,
      data_dir=config.data.data_dir or None,
      image_size=config.data.image_size,
      local_batch_size=self.local_batch,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      crop_pct=config.data.crop_pct,
    )
    for local in batches:
      batch = sharding.make_global_batch(local, batch_sharding)
      for prefix, params in variants:
        for key, value in self._counts(params, batch).items():
          totals[prefix + key] = totals.get(prefix + key, 0.0) + float(value)
    result = {"num_examples": int(totals["num_examples"])}
    for prefix, _ in variants:
      n = max(totals[prefix + "num_examples"], 1.0)
      result[prefix + "top1"] = 100.0 * totals[prefix + "top1"] / n
      result[prefix + "top5"] = 100.0 * totals[prefix + "top5"] / n
    return result


def _mesh_of(state):
  return jax.tree.leaves(state["params"])[0].sharding.mesh
