"""trainer/loop.py: gradient accumulation gives the update of the whole batch, for pretraining
(per-example masks and drop path) and for finetuning without mixup (per-example random erasing
and drop path), with less memory per micro-batch."""

import jax
import numpy as np
import pytest

from classify import task as finetune_task
from configs import fcmae_demo, finetune_demo
from core import logs
from fcmae import pretrain
from models import pretrained as pretrained_weights
from tests.helpers import override
from trainer import loop

ONE = jax.devices()[:1]
SHORT = {
  "batch_size": 32,
  "total_steps": 2,
  "warmup_steps": 1,
  "log_every_steps": 1,
  "checkpoint_every_steps": 3,
  "eval_every_steps": 0,
  "mesh.data": 1,
  "mesh.fsdp": 1,
  "data.image_size": 64,
  "model.drop_path_rate": 0.1,
}


def _train(config, make_task, workdir):
  """(losses, final params, the compiled step's temporaries in bytes) of a short run."""
  loop.train_and_evaluate(config, str(workdir), make_task(config, str(workdir)), devices=ONE)
  rows = logs.read_metrics(str(workdir))
  losses = [r["loss"] for r in rows if "loss" in r]
  temporaries = next(r["temp_gib_per_device"] for r in rows if "temp_gib_per_device" in r)
  return np.asarray(losses), pretrained_weights.restore_train_params(str(workdir)), temporaries


@pytest.mark.parametrize(
  "name, get_config, make_task",
  [
    ("pretraining", fcmae_demo.get_config, pretrain.make_task),
    ("finetuning", finetune_demo.get_config, finetune_task.make_task),
  ],
)
def test_four_micro_batches_give_the_update_of_one_batch_with_less_memory(
  tmp_path, name, get_config, make_task
):
  one = override(get_config(), SHORT)
  if name == "finetuning":
    assert one.aug.mixup == one.aug.cutmix == 0 and one.aug.reprob > 0  # per-example draws only
  four = override(get_config(), {**SHORT, "grad_accum_steps": 4})
  losses1, params1, memory1 = _train(one, make_task, tmp_path / "one")
  losses4, params4, memory4 = _train(four, make_task, tmp_path / "four")
  assert len(losses1) == 2
  np.testing.assert_allclose(losses4, losses1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params4), jax.tree.leaves(params1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # The compiled step's temporaries (XLA's memory analysis): one micro-batch's activations at a
  # time. At 64 px the gradients and parameters are a large share of them.
  assert memory4 < 0.7 * memory1, (memory1, memory4)


def test_micro_batches_must_divide_the_batch_over_the_devices():
  config = override(fcmae_demo.get_config(), {**SHORT, "batch_size": 16, "grad_accum_steps": 3})
  with pytest.raises(ValueError, match="grad_accum_steps 3"):
    loop.setup(config, pretrain.make_task(config, None), devices=ONE)
