"""The run configs: they load the way the command line loads them, carry the paper's numbers
(docs/reference.md sections 2-3, transcribed here independently of configs/recipes.py), are locked,
and describe models and optimizers that can be built (abstractly: nothing big is allocated)."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from classify import task as finetune_task
from data.info import IMAGENET_1K
from fcmae import pretrain
from models import convnextv2
from trainer import loop, optim

# ml_collections loads config files with the deprecated SourceFileLoader.load_module.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A bad `:arg` reaches the user as absl's IllegalFlagValueError carrying our ValueError's message.
BAD_ARG = (ValueError, flags.IllegalFlagValueError)
SIZES = ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")


def load(name, arg=None, *overrides):
  """Loads configs/<name>.py[:arg] exactly as `--config` does, with `--config.x=y` overrides."""
  path = os.path.join(ROOT, "configs", f"{name}.py") + (f":{arg}" if arg else "")
  argv = ["prog", f"--config={path}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", lock_config=True, flag_values=values, sys_argv=argv)
  values(argv)
  return values.config


def test_every_config_file_loads_locked_with_the_shared_schema():
  files = sorted(os.path.basename(f)[:-3] for f in glob.glob(os.path.join(ROOT, "configs", "*.py")))
  runs = [f for f in files if f.startswith(("fcmae_", "finetune_"))]
  assert len(runs) == 2 * len(SIZES) + 2, runs
  shared = {
    "model",
    "data",
    "batch_size",
    "grad_accum_steps",
    "num_epochs",
    "total_steps",
    "warmup_epochs",
    "warmup_steps",
    "seed",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_every_steps",
    "compilation_cache",
    "profile_steps",
    "log",
    "storage",
    "mesh",
    "sharding",
    "optim",
    "init_from",
  }
  for name in runs:
    c = load(name)
    assert c.is_locked, name
    extra = {"fcmae", "probe"} if name.startswith("fcmae_") else {"aug", "eval_only"}
    assert set(c.keys()) == shared | extra, name
    assert set(c.optim.keys()) == {
      "base_lr",
      "min_lr",
      "b1",
      "b2",
      "eps",
      "weight_decay",
      "grad_clip",
      "layer_decay",
      "layer_decay_scheme",
      "ema_decay",
    }
    assert set(c.model.keys()) >= {
      "variant",
      "dtype",
      "depthwise_impl",
      "scan",
      "remat",
      "drop_path_rate",
    }
    full_fsdp = name.endswith("huge")  # the state sharded over every device
    assert (c.mesh.data, c.mesh.fsdp) == ((1, -1) if full_fsdp else (-1, 1)), name
    assert c.sharding.min_size == 2**18
    assert c.model.depthwise_impl == "" and c.optim.grad_clip == 0.0
    variant = name.split("_")[1]
    if variant != "demo":
      assert c.model.variant == variant
      assert c.model.scan == c.model.remat == (variant in ("large", "huge"))


@pytest.mark.parametrize("size", SIZES)
def test_pretraining_recipe_is_table_8_for_every_size(size):
  c = load(f"fcmae_{size}")
  assert (c.optim.b1, c.optim.b2, c.optim.base_lr, c.optim.weight_decay) == (
    0.9,
    0.95,
    1.5e-4,
    0.05,
  )
  assert (c.batch_size, c.num_epochs, c.warmup_epochs, c.optim.min_lr) == (4096, 1600, 40, 0.0)
  assert c.total_steps == 0 and c.warmup_steps == 0
  assert c.optim.layer_decay == 1.0 and c.optim.ema_decay == 0.0
  assert (c.data.image_size, c.data.crop_scale_min, c.data.name) == (224, 0.2, "imagenet2012")
  assert (c.fcmae.mask_ratio, c.fcmae.decoder_dim, c.fcmae.decoder_depth) == (0.6, 512, 1)
  assert c.fcmae.norm_pix_loss is True and c.fcmae.impl == "sparse"


def test_pretraining_800_epoch_option_and_nothing_else():
  assert load("fcmae_base", "800").num_epochs == 800
  assert load("fcmae_base", "epochs=800").num_epochs == 800
  with pytest.raises(BAD_ARG, match="not one of the paper's"):
    load("fcmae_base", "700")


# docs/reference.md section 3, Tables 9-11, by hand:
#          epochs warmup blr      layer decay  wd   drop path mixup cutmix smoothing
IN1K = {
  "atto": (600, 0, 2e-4, 0.9, "single", 0.3, 0.1, 0.0, 0.0, 0.2),
  "femto": (600, 0, 2e-4, 0.9, "single", 0.05, 0.0, 0.3, 0.3, 0.2),
  "pico": (600, 0, 2e-4, 0.9, "single", 0.3, 0.0, 0.3, 0.3, 0.2),
  "nano": (600, 0, 2e-4, 0.9, "single", 0.3, 0.1, 0.5, 0.5, 0.2),
  "tiny": (300, 40, 8e-4, 0.9, "single", 0.05, 0.2, 0.8, 1.0, 0.1),
  "base": (100, 20, 6.25e-4, 0.6, "group", 0.05, 0.1, 0.8, 1.0, 0.1),
  "large": (100, 20, 6.25e-4, 0.6, "group", 0.05, 0.2, 0.8, 1.0, 0.1),
  "huge": (50, 10, 1.25e-3, 0.75, "single", 0.05, 0.3, 0.8, 1.0, 0.1),
}


@pytest.mark.parametrize("size", SIZES)
def test_in1k_finetuning_matches_tables_9_to_11(size):
  c = load(f"finetune_{size}")
  got = (
    c.num_epochs,
    c.warmup_epochs,
    c.optim.base_lr,
    c.optim.layer_decay,
    c.optim.layer_decay_scheme,
    c.optim.weight_decay,
    c.model.drop_path_rate,
    c.aug.mixup,
    c.aug.cutmix,
    c.aug.label_smoothing,
  )
  assert got == IN1K[size]
  # Shared finetuning values.
  assert (c.optim.b1, c.optim.b2, c.optim.eps, c.batch_size) == (0.9, 0.999, 1e-8, 1024)
  assert (c.model.head_init_scale, c.optim.ema_decay, c.optim.min_lr) == (0.001, 0.9999, 1e-6)
  assert (c.aug.randaugment, c.aug.reprob, c.aug.mixup_switch_prob) == (
    "rand-m9-mstd0.5-inc1",
    0.25,
    0.5,
  )
  assert (c.data.image_size, c.data.crop_scale_min, c.data.crop_pct) == (224, 0.08, 0.875)
  assert (c.data.num_classes, c.init_from, c.eval_only) == (0, "", False)
  assert c.data.name == "imagenet2012"


def test_22k_intermediate_stage_is_table_12():
  b = load("finetune_base", "in22k")
  assert (b.optim.base_lr, b.optim.weight_decay, b.optim.layer_decay, b.batch_size) == (
    2.5e-4,
    0.05,
    0.8,
    4096,
  )
  assert (b.num_epochs, b.warmup_epochs, b.optim.ema_decay, b.model.drop_path_rate) == (
    90,
    5,
    0.0,
    0.1,
  )
  assert (b.aug.mixup, b.aug.cutmix, b.aug.label_smoothing) == (0.8, 1.0, 0.1)
  assert b.data.name.startswith("folder:")
  t = load("finetune_tiny", "stage=in22k")
  assert (t.optim.layer_decay, t.optim.layer_decay_scheme, t.model.drop_path_rate) == (
    0.9,
    "single",
    0.0,
  )
  h = load("finetune_huge", "in22k")
  assert (h.optim.layer_decay, h.model.drop_path_rate) == (0.8, 0.3)


def test_22k_to_1k_stage_is_table_13_at_224_and_384():
  b = load("finetune_base", "in22k_to_in1k,384")
  assert b.data.image_size == 384 and b.data.name == "imagenet2012"
  assert (b.optim.base_lr, b.optim.weight_decay, b.batch_size, b.warmup_epochs) == (
    2.5e-5,
    1e-8,
    512,
    0,
  )
  assert (b.num_epochs, b.optim.layer_decay, b.model.drop_path_rate, b.optim.ema_decay) == (
    30,
    0.8,
    0.2,
    0.9999,
  )
  assert (b.aug.mixup, b.aug.cutmix) == (0.0, 0.0)
  assert load("finetune_base", "in22k_to_in1k").data.image_size == 224
  assert load("finetune_large", "in22k_to_in1k").model.drop_path_rate == 0.3
  h = load("finetune_huge", "in22k_to_in1k,384")
  assert (h.optim.ema_decay, h.optim.layer_decay, h.model.drop_path_rate, h.num_epochs) == (
    0.0,
    0.85,
    0.5,
    30,
  )
  n = load("finetune_nano", "stage=in22k_to_in1k,resolution=384")
  assert (n.num_epochs, n.optim.layer_decay, n.model.drop_path_rate, n.data.image_size) == (
    90,
    0.9,
    0.1,
    384,
  )


def test_bad_stage_arguments_are_rejected():
  with pytest.raises(BAD_ARG, match="no 'in22k' recipe for 'atto'"):
    load("finetune_atto", "in22k")
  with pytest.raises(BAD_ARG, match="Unknown finetuning stage"):
    load("finetune_base", "in21k")
  with pytest.raises(BAD_ARG, match="multiple of 32"):
    load("finetune_base", "in1k,300")
  with pytest.raises(BAD_ARG, match="Unknown config argument"):
    load("finetune_base", "res=384")


def test_lr_scales_with_the_global_batch():
  c = load("fcmae_base")
  assert optim.peak_learning_rate(c) == pytest.approx(1.5e-4 * 4096 / 256)
  small = load("fcmae_base", None, "--config.batch_size=1024")
  assert optim.peak_learning_rate(small) == pytest.approx(1.5e-4 * 4)
  schedule = optim.learning_rate(small, steps_per_epoch=10)
  assert float(schedule(400)) == pytest.approx(6e-4, rel=1e-6)  # end of 40 warmup epochs
  b = load("finetune_base")
  assert optim.peak_learning_rate(b) == pytest.approx(6.25e-4 * 4)


def test_command_line_overrides_work_and_typos_raise():
  c = load(
    "finetune_base",
    "in22k_to_in1k,384",
    "--config.batch_size=64",
    "--config.model.variant=tiny",
    "--config.warmup_epochs=5",
    "--config.optim.base_lr=1",
    "--config.aug.mixup=0.2",
  )
  assert (c.batch_size, c.model.variant, c.warmup_epochs, c.optim.base_lr, c.aug.mixup) == (
    64,
    "tiny",
    5.0,
    1.0,
    0.2,
  )
  assert c.data.image_size == 384
  with pytest.raises(Exception, match="bogus"):
    load("finetune_base", None, "--config.optim.bogus=1")
  c = load("fcmae_tiny")
  with pytest.raises(AttributeError):
    c.batch_siz = 3
  with pytest.raises(AttributeError):
    c.optim.lr = 3.0


def test_demo_configs_are_small_and_on_the_demo_data():
  p = load("fcmae_demo")
  assert (p.data.name, p.model.variant, p.data.image_size, p.fcmae.mask_ratio) == (
    "demo",
    "atto",
    128,
    0.6,
  )
  assert p.probe.enabled and p.probe.train_examples >= 1200  # the monitors see the whole demo
  assert p.batch_size <= 128 and 0 < p.total_steps <= 400 and 0 < p.warmup_steps < p.total_steps
  assert p.checkpoint_every_steps <= p.total_steps and p.log_every_steps <= 25
  assert p.model.dtype == "float32"
  f = load("finetune_demo")
  assert (f.data.name, f.model.variant, f.init_from) == ("demo", "atto", "")
  assert f.batch_size <= 128 and f.num_epochs <= 30 and 0 < f.optim.ema_decay < 0.999
  assert f.eval_every_steps <= 18 * f.num_epochs


@pytest.mark.parametrize("size", SIZES)
def test_each_config_builds_its_run_as_train_py_and_finetune_py_do(size):
  """config -> task -> loop.setup, the path of a real run (abstractly: jax.eval_shape of the
  sharded state, nothing allocated or compiled): the pretraining model with its decoder, and
  the classifier with the config's dtype, depthwise form, drop path, head scale and layer-decay
  scheme (group only where the depths allow it)."""
  p = load(f"fcmae_{size}")
  run = loop.setup(p, pretrain.make_task(p, None, info=IMAGENET_1K))
  params = run.abstract_state["params"]
  assert params["mask_token"].shape == (512,)
  assert params["pred"]["kernel"].shape == (512, 32 * 32 * 3)
  assert run.abstract_batch["image"].shape == (4096, 224, 224, 3)
  assert run.total_steps == 1600 * (1_281_167 // 4096)

  f = load(f"finetune_{size}")
  task = finetune_task.make_task(f, None, info=IMAGENET_1K)
  run = loop.setup(f, task)
  params = run.abstract_state["params"]
  paper_m = convnextv2.VARIANTS[size]["params_m"]
  assert convnextv2.count_params(params) / 1e6 == pytest.approx(paper_m, abs=0.01)
  assert "ema_params" in run.abstract_state  # EMA 0.9999 in every IN-1K recipe
  # The classifier the task built is the one the config describes.
  apply_fn, _ = finetune_task.build_model(f, 1000, abstract=True)
  images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  assert jax.eval_shape(apply_fn, params, images).shape == (2, 1000)


def test_validation_names_what_the_models_name():
  """configs/schema.py checks a config before the models are imported, with its own copies of
  their names and stride: they must stay the models' own."""
  from configs import checks, schema
  from fcmae import masking
  from fcmae import model as fcmae_model
  from models import layers

  assert schema.DEPTHWISE_IMPLS == ("",) + layers.DEPTHWISE_IMPLS
  assert schema.FCMAE_IMPLS == fcmae_model.IMPLS
  assert checks.STRIDE == convnextv2.TOTAL_STRIDE == masking.PATCH_SIZE
  assert schema.LAYER_DECAY_SCHEMES == optim.SCHEMES
