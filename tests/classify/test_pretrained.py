"""classify/pretrained.py: init_from loads an FCMAE encoder under a fresh head, reports what it
skipped, and names the tensors of a variant that does not fit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classify import pretrained
from classify import task as finetune_task
from fcmae import model as fcmae_model
from models import pretrained as pretrained_weights
from tests.helpers import finetune_config, perturb
from trainer import checkpoint


def _fcmae_checkpoint(path):
  """A pretraining checkpoint as train.py writes it (state with FCMAE params)."""
  _, params = fcmae_model.build("atto", image_size=64, seed=3)
  params = perturb(params)
  ckpt = checkpoint.Checkpointer(str(path))
  ckpt.save(10, {"step": jnp.asarray(10), "params": params})
  ckpt.close()
  return params


def test_init_from_an_fcmae_checkpoint_loads_the_encoder_and_a_fresh_head(tmp_path):
  source = _fcmae_checkpoint(tmp_path / "pretrain" / "checkpoints")
  config = finetune_config(init_from=str(tmp_path / "pretrain"))
  task = finetune_task.make_task(config, str(tmp_path / "ft"))
  fresh = jax.jit(task.fresh_params)()
  params = task.load_pretrained(fresh)
  for a, b in zip(jax.tree.leaves(params["stage2"]), jax.tree.leaves(source["encoder"]["stage2"])):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(params["head"]["kernel"], fresh["head"]["kernel"])
  assert float(np.abs(params["head"]["kernel"]).max()) < 0.01  # head_init_scale 0.001
  _, report = pretrained.merge_pretrained(jax.device_get(fresh), source)
  assert "head/kernel" in report["initialized"] and "norm/scale" in report["initialized"]
  assert "stem/conv/kernel" in report["loaded"]
  assert "mask_token" in report["skipped"] and "decoder/blocks/grn/gamma" in report["skipped"]


def test_init_from_reports_what_it_skipped(tmp_path):
  _fcmae_checkpoint(tmp_path / "pretrain" / "checkpoints")
  config = finetune_config(init_from=str(tmp_path / "pretrain"))
  _, report = pretrained.merge_pretrained(
    jax.device_get(jax.jit(finetune_task.make_task(config, str(tmp_path)).fresh_params)()),
    {
      "extra": {"kernel": np.zeros(3)},
      **pretrained_weights.read_params(config.init_from)["encoder"],
    },
  )
  assert report["skipped"] == ["extra/kernel"]


def test_init_from_a_different_variant_names_the_tensors(tmp_path):
  _fcmae_checkpoint(tmp_path / "pretrain" / "checkpoints")
  config = finetune_config(**{"init_from": str(tmp_path / "pretrain"), "model.variant": "femto"})
  task = finetune_task.make_task(config, str(tmp_path / "ft"))
  expected = r"downsample1/conv/kernel: checkpoint \(2, 2, 40, 80\), model \(2, 2, 48, 96\)"
  with pytest.raises(ValueError, match=expected):
    task.load_pretrained(jax.jit(task.fresh_params)())


def test_missing_init_from_is_a_clear_error(tmp_path):
  with pytest.raises(pretrained_weights.WeightsError, match="does not exist"):
    pretrained_weights.read_params(str(tmp_path / "nope"))
