"""classify/evaluate.py: every validation image counted exactly once, and top-1 / top-5 equal to
those computed from the model's own logits."""

import jax
import numpy as np
import pytest

from classify import task
from core import logs
from data import demo, eval_pipeline, on_device, sources
from models import convert, converted
from tests.helpers import finetune_config
from trainer import loop

DEMO_CLASSES = len(demo.CLASSES)
ONE = jax.devices()[:1]


def _hf_checkpoint(path):
  import torch
  from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

  torch.manual_seed(0)
  model = ConvNextV2ForImageClassification(
    ConvNextV2Config(hidden_sizes=[40, 80, 160, 320], depths=[2, 2, 6, 2], num_labels=DEMO_CLASSES)
  )
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "grn" in name or "layernorm" in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(str(path))


def test_eval_of_a_converted_checkpoint_is_exact_and_matches_its_logits(tmp_path):
  _hf_checkpoint(tmp_path / "hf")
  convert.main([str(tmp_path / "hf"), str(tmp_path / "converted")])
  config = finetune_config(init_from=str(tmp_path / "converted"), eval_only=True, batch_size=64)
  result = loop.evaluate_only(
    config, str(tmp_path / "eval"), task.make_task(config, str(tmp_path / "eval")), devices=ONE
  )
  # The demo's 240 validation images do not fill whole batches of 64: all counted, once.
  info = sources.dataset_info("demo")
  assert info.num_eval_examples % 64 != 0
  assert result["num_examples"] == info.num_eval_examples

  apply_fn, params = converted.load(str(tmp_path / "converted"))
  correct1 = correct5 = 0
  for batch in eval_pipeline.eval_iterator("demo", image_size=64, local_batch_size=64):
    logits = np.asarray(jax.jit(apply_fn)(params, on_device.normalize(batch["image"])))
    top5 = np.argsort(-logits, axis=1)[:, :5]
    real = batch["mask"] > 0
    correct1 += int(np.sum((top5[:, 0] == batch["label"])[real]))
    correct5 += int(np.sum(np.any(top5 == batch["label"][:, None], axis=1)[real]))
  assert result["top1"] == pytest.approx(100 * correct1 / info.num_eval_examples, abs=1e-6)
  assert result["top5"] == pytest.approx(100 * correct5 / info.num_eval_examples, abs=1e-6)
  row = logs.read_metrics(str(tmp_path / "eval"))[-1]
  assert {"top1", "top5", "num_examples"} <= set(row)
