"""The contract between a job (pretraining, finetuning) and the training loop (trainer/loop.py):
the parts of a run that differ between jobs. fcmae/pretrain.py and classify/task.py build one;
the loop drives it. It imports nothing of the project but the cost type, so the jobs need not
import the loop above them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax

from core import cost as cost_lib


@dataclasses.dataclass
class Task:
  """The job-specific parts of a run.

  fresh_params: () -> params, traced under jit (so it must be jax-only).
  loss_fn: (params, batch, rng) -> (loss, dict of scalar metrics): the mean over the batch, a dict
    of global arrays with "key", one PRNG key per example (for per-example randomness: the same
    whichever micro-batch the example lands in); rng is one key for the whole (micro-)batch.
  train_batches: (start_step) -> iterator of this process's local numpy batches.
  steps_per_epoch: global steps in one pass over the training data.
  load_pretrained: optional (fresh params) -> params, called once when a run starts from scratch
    (finetuning loads a pretrained encoder here).
  evaluate: optional (state, step) -> dict of metrics, called every config.eval_every_steps and at
    the end (pretraining writes reconstruction pictures, finetuning measures accuracy).
  compile_eval: optional (run, compiler_options) -> cost.StepCost of the evaluation step, for
    --compile_only.
  evaluate_at_start: evaluate before the first step of a fresh run too (pretraining's monitors:
    the figures at initialisation).
  shown: the names of evaluate's metrics that the progress line shows (each task names its own).
  """

  fresh_params: Callable[[], Any]
  loss_fn: Callable[..., tuple[jax.Array, dict]]
  train_batches: Callable[[int], Iterator[dict]]
  steps_per_epoch: int
  load_pretrained: Callable[[Any], Any] | None = None
  evaluate: Callable[[dict, int], dict] | None = None
  skipped_images: Callable[[], int] | None = None
  compile_eval: Callable[..., cost_lib.StepCost] | None = None
  evaluate_at_start: bool = False
  shown: tuple[str, ...] = ()
