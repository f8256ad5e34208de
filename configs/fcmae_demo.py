"""FCMAE pretraining demo: ConvNeXt V2-Atto on the built-in synthetic data, minutes on a CPU.

    python train.py --config configs/fcmae_demo.py --workdir /tmp/fcmae_demo

The paper's recipe (configs/recipes.py) scaled down; what differs and why:
- data 'demo' (12 classes of 64x64 shapes and textures, 1200 train images), image_size 64: a 2x2
  grid of 32-pixel patches, L=4, mask ratio 0.6 keeps 1 patch and predicts 3. (96 px gives L=9
  with 3 visible but made each step ~5x slower on CPU; 64 px learns well enough: the
  normalized-pixel loss falls from ~1.0 to ~0.65 in 250 steps.)
- 250 steps of batch 64 (~13 epochs): ~40 s to compile plus ~0.6 s a step on 2 CPU cores, so
  about 3-4 minutes; float32 (bfloat16 is slow on CPU).
- base_lr 6e-3, i.e. lr 1.5e-3 at batch 64 (the paper's 1.5e-4 x 64/256 would barely move in
  250 steps), 20 warmup steps, cosine to 0.
"""

from configs import common


def get_config(arg=None):
  common.no_arg(arg, "configs/fcmae_demo.py")
  c = common.pretrain_config("atto")
  c.model.dtype = "float32"
  c.data.name = "demo"
  c.data.image_size = 64
  c.batch_size = 64
  c.num_epochs = 13             # informational: total_steps rules
  c.total_steps = 250
  c.warmup_steps = 20
  c.optim.base_lr = 6e-3
  c.log_every_steps = 20
  c.checkpoint_every_steps = 100
  c.eval_every_steps = 100      # reconstruction pictures
  return c
