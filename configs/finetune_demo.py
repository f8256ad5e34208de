r"""Finetuning demo: ConvNeXt V2-Atto classifying the built-in synthetic data (12 classes), on a CPU.

    python finetune.py --config configs/finetune_demo.py --workdir /tmp/finetune_demo
    # from the pretraining demo's checkpoint instead of from scratch:
    python finetune.py --config configs/finetune_demo.py --workdir /tmp/finetune_demo \
        --config.init_from=/tmp/fcmae_demo

The Atto IN-1K recipe (configs/recipes.py: wd .3, layer decay .9, drop path .1, no mixup/cutmix,
smoothing .2, RandAugment, random erasing) scaled down: 15 epochs of batch 64 at 64 px (18 steps
an epoch, 270 steps: minutes on a CPU, docs/demo.md has the times), base_lr 4e-3
(lr 1e-3 at batch 64; works from scratch), 20 warmup steps, EMA decay 0.99 (0.9999 would still
be ~97% the initial weights after 270 steps), evaluation every 5 epochs.
"""

from configs import common


def get_config(arg=None):
  common.no_arg(arg, "configs/finetune_demo.py")
  c = common.finetune_config("atto")
  c.model.dtype = "float32"
  c.data.name = "demo"
  c.data.image_size = 64
  c.batch_size = 64
  c.num_epochs = 15
  c.warmup_steps = 20
  c.optim.base_lr = 4e-3
  c.optim.ema_decay = 0.99
  c.log_every_steps = 20
  c.checkpoint_every_steps = 90
  c.eval_every_steps = 90
  return c
