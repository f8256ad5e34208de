"""finetune.py end to end on the built-in data: train, evaluate, resume."""

import json

import jax
import numpy as np

from classify import task
from core import logs
from tests.helpers import finetune_config
from trainer import loop

ONE = jax.devices()[:1]


def test_finetuning_runs_evaluates_and_resumes(tmp_path):
  config = finetune_config(**{"aug.mixup": 0.8, "aug.cutmix": 1.0})
  workdir = str(tmp_path)
  loop.train_and_evaluate(config, workdir, task.make_task(config, workdir), devices=ONE)
  rows = logs.read_metrics(workdir)
  evals = [r for r in rows if "top1" in r]
  assert len(evals) == 1 and evals[0]["step"] == 6
  assert {"top5", "ema_top1", "ema_top5", "num_examples"} <= set(evals[0])
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
  # Asking for more steps resumes from the checkpoint of step 6.
  config.total_steps = 9
  state = loop.train_and_evaluate(config, workdir, task.make_task(config, workdir), devices=ONE)
  assert int(state["step"]) == 9
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["total_steps"] == 9
