"""finetune.py end to end on the built-in data: train, evaluate, resume."""

import json

import jax
import numpy as np

from classify import task
from configs import finetune_demo
from tests.helpers import override
from trainer import logs, loop

ONE = jax.devices()[:1]


def _config(**changes):
  """The finetuning demo, six steps on one device (8 fake devices on 2 cores are slow)."""
  return override(finetune_demo.get_config(), {
      "batch_size": 32, "total_steps": 6, "warmup_steps": 2, "log_every_steps": 3,
      "checkpoint_every_steps": 6, "eval_every_steps": 6, "mesh.data": 1, "mesh.fsdp": 1,
      **changes})


def test_finetuning_runs_evaluates_and_resumes(tmp_path):
  config = _config(**{"aug.mixup": 0.8, "aug.cutmix": 1.0})
  workdir = str(tmp_path)
  loop.train_and_evaluate(config, workdir, task.make_task(config, workdir), devices=ONE)
  rows = logs.read_metrics(workdir)
  evals = [r for r in rows if "top1" in r]
  assert len(evals) == 1 and evals[0]["step"] == 6
  assert {"top5", "ema_top1", "ema_top5", "num_examples"} <= set(evals[0])
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
  # Asking for more steps resumes from the checkpoint of step 6.
  config.total_steps = 9
  state = loop.train_and_evaluate(config, workdir, task.make_task(config, workdir),
                                  devices=ONE)
  assert int(state["step"]) == 9
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["total_steps"] == 9
