"""finetune.py: init_from (FCMAE checkpoint, converted HF checkpoint), exact evaluation, the
finetuning loop end to end on the built-in data."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import finetune_demo
from fcmae import checkpoint, classify, data, loop, metrics
from fcmae import model as fcmae_model
from models import convert
from tests.helpers import perturb

DEMO_CLASSES = len(data.DEMO_CLASSES)
ONE = jax.devices()[:1]


def _config(**changes):
  config = finetune_demo.get_config()
  config.batch_size = 32
  config.total_steps = 6
  config.warmup_steps = 2
  config.log_every_steps = 3
  config.checkpoint_every_steps = 6
  config.eval_every_steps = 6
  config.mesh.data = config.mesh.fsdp = 1  # runs on one device: 8 fake ones on 2 cores are slow
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def _fcmae_checkpoint(path):
  """A pretraining checkpoint as train.py writes it (state with FCMAE params)."""
  _, params = fcmae_model.build("atto", image_size=64, seed=3)
  params = perturb(params)
  ckpt = checkpoint.Checkpointer(str(path))
  ckpt.save(10, {"step": jnp.asarray(10), "params": params}, {"step": 10})
  ckpt.close()
  return params


def test_init_from_an_fcmae_checkpoint_loads_the_encoder_and_a_fresh_head(tmp_path):
  pretrained = _fcmae_checkpoint(tmp_path / "pretrain" / "checkpoints")
  config = _config(init_from=str(tmp_path / "pretrain"))
  task = classify.make_task(config, str(tmp_path / "ft"))
  fresh = jax.jit(task.init_params)()
  params = task.initial_params(fresh)
  for a, b in zip(jax.tree.leaves(params["stage2"]), jax.tree.leaves(pretrained["encoder"]["stage2"])):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(params["head"]["kernel"], fresh["head"]["kernel"])
  assert float(np.abs(params["head"]["kernel"]).max()) < 0.01  # head_init_scale 0.001
  _, report = classify.merge_pretrained(jax.device_get(fresh), pretrained)
  assert "head/kernel" in report["initialized"] and "norm/scale" in report["initialized"]
  assert "stem/conv/kernel" in report["loaded"]
  assert "mask_token" in report["skipped"] and "decoder/blocks/grn/gamma" in report["skipped"]


def test_init_from_reports_what_it_skipped(tmp_path):
  _fcmae_checkpoint(tmp_path / "pretrain" / "checkpoints")
  config = _config(init_from=str(tmp_path / "pretrain"))
  _, report = classify.merge_pretrained(
      jax.device_get(jax.jit(classify.make_task(config, str(tmp_path)).init_params)()),
      {"extra": {"kernel": np.zeros(3)}, **classify.read_pretrained(config.init_from)["encoder"]})
  assert report["skipped"] == ["extra/kernel"]


def test_init_from_a_different_variant_names_the_tensors(tmp_path):
  _fcmae_checkpoint(tmp_path / "pretrain" / "checkpoints")
  config = _config(init_from=str(tmp_path / "pretrain"), **{"model.variant": "femto"})
  task = classify.make_task(config, str(tmp_path / "ft"))
  expected = r"downsample1/conv/kernel: checkpoint \(2, 2, 40, 80\), model \(2, 2, 48, 96\)"
  with pytest.raises(ValueError, match=expected):
    task.initial_params(jax.jit(task.init_params)())


def test_missing_init_from_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    classify.read_pretrained(str(tmp_path / "nope"))


def _hf_checkpoint(path):
  import torch
  from transformers import ConvNextV2Config, ConvNextV2ForImageClassification
  torch.manual_seed(0)
  model = ConvNextV2ForImageClassification(ConvNextV2Config(
      hidden_sizes=[40, 80, 160, 320], depths=[2, 2, 6, 2], num_labels=DEMO_CLASSES))
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "grn" in name or "layernorm" in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(str(path))


def test_eval_of_a_converted_checkpoint_is_exact_and_matches_its_logits(tmp_path):
  _hf_checkpoint(tmp_path / "hf")
  convert.main([str(tmp_path / "hf"), str(tmp_path / "converted")])
  config = _config(init_from=str(tmp_path / "converted"), eval_only=True, batch_size=64)
  result = classify.evaluate_only(config, str(tmp_path / "eval"), devices=ONE)
  # The demo's 240 validation images do not fill whole batches of 64: all counted, once.
  info = data.dataset_info("demo")
  assert info.num_eval_examples % 64 != 0
  assert result["num_examples"] == info.num_eval_examples

  apply_fn, params = convert.load(str(tmp_path / "converted"))
  correct1 = correct5 = 0
  for batch in data.eval_iterator("demo", image_size=64, local_batch_size=64):
    logits = np.asarray(jax.jit(apply_fn)(params, jnp.asarray(batch["image"])))
    top5 = np.argsort(-logits, axis=1)[:, :5]
    real = batch["mask"] > 0
    correct1 += int(np.sum((top5[:, 0] == batch["label"])[real]))
    correct5 += int(np.sum(np.any(top5 == batch["label"][:, None], axis=1)[real]))
  assert result["top1"] == pytest.approx(100 * correct1 / info.num_eval_examples, abs=1e-6)
  assert result["top5"] == pytest.approx(100 * correct5 / info.num_eval_examples, abs=1e-6)
  row = metrics.read_metrics(str(tmp_path / "eval"))[-1]
  assert {"top1", "top5", "num_examples"} <= set(row)


def test_finetuning_runs_evaluates_and_resumes(tmp_path):
  config = _config(**{"aug.mixup": 0.8, "aug.cutmix": 1.0})
  workdir = str(tmp_path)
  loop.train_and_evaluate(config, workdir, classify.make_task(config, workdir), devices=ONE)
  rows = metrics.read_metrics(workdir)
  evals = [r for r in rows if "top1" in r]
  assert len(evals) == 1 and evals[0]["step"] == 6
  assert {"top5", "ema_top1", "ema_top5", "num_examples"} <= set(evals[0])
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
  # Asking for more steps resumes from the checkpoint of step 6.
  config.total_steps = 9
  state = loop.train_and_evaluate(config, workdir, classify.make_task(config, workdir),
                                  devices=ONE)
  assert int(state["step"]) == 9
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["total_steps"] == 9
