"""FCMAE pretraining demo: ConvNeXt V2-Atto on the built-in synthetic data, minutes on a CPU.

    python train.py --config configs/fcmae_demo.py --workdir runs/fcmae_demo

The paper's recipe (configs/recipes.py) scaled down; what differs and why:
- data 'demo' (12 classes of 64x64 shapes and textures, 1200 train images) at image_size 128:
  a 4x4 grid of 32-pixel patches, of which mask ratio 0.6 leaves 6 visible, enough for a person
  to judge the reconstructions (at 64 px one patch of 4 is visible).
- 300 steps of batch 32 (8 epochs): minutes on a CPU (docs/demo.md has the times); float32
  (bfloat16 is slow on CPU).
- base_lr 6e-3, i.e. lr 7.5e-4 at batch 32 (the paper's 1.5e-4 x 32/256 would barely move in
  300 steps), 20 warmup steps, cosine to 0.
- Pictures and the kNN / linear-probe monitors (on all 1,200 training images and the 240
  validation images) before the first step and every 150 steps.
"""

from configs import common


def get_config(arg=None):
  common.no_arg(arg, "configs/fcmae_demo.py")
  c = common.pretrain_config("atto")
  c.model.dtype = "float32"
  c.data.name = "demo"
  c.data.image_size = 128
  c.batch_size = 32
  c.num_epochs = 8  # informational: total_steps rules
  c.total_steps = 300
  c.warmup_steps = 20
  c.optim.base_lr = 6e-3
  c.log_every_steps = 20
  c.checkpoint_every_steps = 150
  c.eval_every_steps = 150  # pictures and monitors
  c.probe.train_examples = 1200
  return c
