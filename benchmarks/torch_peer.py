"""The PyTorch peers of our GPU train steps, timed the way benchmarks/train_step.py times ours.

    python -m benchmarks.torch_peer --step finetune --batch 128     # timm's convnextv2_base
    python -m benchmarks.torch_peer --step fcmae --batch 128        # dense FCMAE-Base
    python -m benchmarks.torch_peer --step fcmae --variant atto --image-size 64 --batch 2 \\
        --device cpu --no-compile --steps 1                          # gpu.sh --dry-run's check

- `finetune`: timm's `convnextv2_<variant>` classifier, channels_last, bf16 autocast, the model
  under `torch.compile`, fused AdamW, cross-entropy on hard labels (no mixup, no label smoothing:
  gpu.sh turns them off on our side too), drop path as our finetuning config has it.
- `fcmae`: a dense FCMAE step written here from timm's `convnextv2_<variant>` encoder and the
  official repository's FCMAE (facebookresearch/ConvNeXt-V2, models/fcmae.py): its random patch
  mask, its decoder (1x1 proj, mask token, one ConvNeXt V2 block of 512, 1x1 to 32*32*3 pixels)
  and its normalized-pixel loss over masked patches. The official encoder is sparse
  (MinkowskiEngine, which does not build for current CUDA); here it is the paper's dense
  emulation of it, as our `--config.fcmae.impl=dense` computes: the stem's output zeroed under
  masked patches, the mask applied before and after every depthwise convolution, GRN's norms
  over visible positions only.

Images are uint8 on the device and normalized in the step, as ours are. After `--warmup` steps
(the first ones compile: their time is printed apart), `--steps` steps are timed one by one
(synchronized); the median gives images/s. Prints one line and appends one JSON object to
`--out`. On a CPU, `--no-compile` skips torch.compile (it takes minutes there) and bf16 autocast
runs as CPU autocast: a check that the step runs, not a figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F

MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
PATCH = 32


def import_timm():
  """timm, even where the installed torchvision's C++ ops do not match torch (a CUDA torchvision
  beside a CPU torch fails at import registering them); timm's ConvNeXt uses none of them."""
  try:
    import torchvision  # noqa: F401
  except RuntimeError:
    for name in [m for m in sys.modules if m.startswith("torchvision")]:
      del sys.modules[name]
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("_meta_registrations")
  import timm

  return timm


class DenseFCMAE(torch.nn.Module):
  """FCMAE with timm's ConvNeXt V2 encoder run in the dense emulation of sparse convolution."""

  def __init__(self, timm, variant: str, decoder_dim: int = 512, mask_ratio: float = 0.6):
    super().__init__()
    from timm.models.convnext import ConvNeXtBlock

    self.encoder = timm.create_model(f"convnextv2_{variant}", pretrained=False, num_classes=0)
    width = self.encoder.num_features
    self.proj = torch.nn.Conv2d(width, decoder_dim, 1)
    self.mask_token = torch.nn.Parameter(torch.zeros(1, decoder_dim, 1, 1))
    self.decoder = ConvNeXtBlock(decoder_dim, ls_init_value=None, use_grn=True)
    self.pred = torch.nn.Conv2d(decoder_dim, PATCH * PATCH * 3, 1)
    self.mask_ratio = mask_ratio

  def random_mask(self, images):
    """The official gen_random_mask: (N, L), 1 = masked, len_keep = int(L * (1 - ratio))."""
    n, length = images.shape[0], (images.shape[2] // PATCH) ** 2
    keep = int(length * (1 - self.mask_ratio))
    ids_restore = torch.argsort(torch.argsort(torch.rand(n, length, device=images.device), 1), 1)
    mask = torch.ones(n, length, device=images.device)
    mask[:, :keep] = 0
    return torch.gather(mask, 1, ids_restore)

  @staticmethod
  def _block(block, x, visible):
    """timm's ConvNeXtBlock with the mask around its depthwise convolution and GRN's norm over
    visible positions: x (N, C, H, W), visible (N, 1, H, W). Base and Tiny run the MLP channels
    last (Linear layers); Atto to Nano as 1x1 convolutions (timm's conv_mlp)."""
    shortcut = x
    x = block.conv_dw(x * visible) * visible
    channels_last = not block.use_conv_mlp
    if channels_last:
      x, visible = x.permute(0, 2, 3, 1), visible.permute(0, 2, 3, 1)  # (N, H, W, C)
    spatial, channel = ((1, 2), -1) if channels_last else ((2, 3), 1)
    mlp = block.mlp
    x = mlp.act(mlp.fc1(block.norm(x)))
    grn = mlp.grn
    gx = torch.linalg.vector_norm(x * visible, dim=spatial, keepdim=True)
    nx = gx / (gx.mean(dim=channel, keepdim=True) + grn.eps)
    shape = (-1,) if channels_last else (1, -1, 1, 1)
    x = x + torch.addcmul(grn.bias.view(shape), grn.weight.view(shape), x * nx)
    x = mlp.fc2(x)
    if channels_last:
      x = x.permute(0, 3, 1, 2)
    return shortcut + block.drop_path(x)

  def forward(self, images):
    mask = self.random_mask(images)
    side = images.shape[2] // PATCH
    grid = mask.reshape(-1, 1, side, side)
    enc = self.encoder
    x = enc.stem(images)
    for i, stage in enumerate(enc.stages):
      x = stage.downsample(x)
      visible = 1.0 - F.interpolate(grid, scale_factor=x.shape[2] // side).to(x.dtype)
      if i == 0:
        x = x * visible
      for block in stage.blocks:
        x = self._block(block, x, visible)
    x = self.proj(x)
    m = grid.to(x.dtype)
    x = x * (1.0 - m) + self.mask_token.to(x.dtype) * m
    pred = self.pred(self.decoder(x)).flatten(2).transpose(1, 2).float()  # (N, L, 3072)
    n = images.shape[0]
    target = images.float().reshape(n, 3, side, PATCH, side, PATCH)
    target = torch.einsum("nchpwq->nhwpqc", target).reshape(n, side * side, -1)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    target = (target - mean) / (var + 1e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(-1)
    return (loss * mask).sum() / mask.sum()


def build(args, device):
  timm = import_timm()
  if args.step == "finetune":
    model = timm.create_model(
      f"convnextv2_{args.variant}", pretrained=False, drop_path_rate=args.drop_path
    )
  else:
    model = DenseFCMAE(timm, args.variant)
  model = model.to(device).to(memory_format=torch.channels_last)
  optimizer = torch.optim.AdamW(
    model.parameters(), lr=1e-4, weight_decay=0.05, fused=device.type == "cuda"
  )
  forward = torch.compile(model) if args.compile else model
  mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
  std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

  def step(images, labels):
    x = ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16):
      out = forward(x)
      loss = F.cross_entropy(out.float(), labels) if args.step == "finetune" else out
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss

  return step


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--step", choices=("finetune", "fcmae"), required=True)
  p.add_argument("--variant", default="base")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--drop-path", type=float, default=0.1, help="finetuning's (our Base config's)")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
  p.add_argument("--no-compile", dest="compile", action="store_false")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  device = torch.device(args.device)
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  step = build(args, device)
  gen = torch.Generator().manual_seed(0)
  size = (args.batch, 3, args.image_size, args.image_size)
  images = torch.randint(0, 255, size, generator=gen, dtype=torch.uint8).to(device)
  labels = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)
  start = time.perf_counter()
  loss = step(images, labels)  # compiles
  sync()
  compile_seconds = time.perf_counter() - start
  for _ in range(args.warmup):
    loss = step(images, labels)
  sync()
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    loss = step(images, labels)
    sync()
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  name = f"torch {args.step} {args.variant}"
  result = {
    "date": datetime.date.today().isoformat(),
    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    "config": name,
    "overrides": [f"--image-size={args.image_size}", f"--compile={args.compile}"],
    "framework": f"torch {torch.__version__}",
    "global_batch": args.batch,
    "step_ms": 1e3 * seconds,
    "images_per_sec": args.batch / seconds,
    "compile_seconds": round(compile_seconds, 1),
    "final_loss": float(loss.detach()),
  }
  print(
    f"{name}: {result['images_per_sec']:.0f} img/s ({1e3 * seconds:.0f} ms/step, batch "
    f"{args.batch}, {result['device']}); first step (compile) {compile_seconds:.0f} s",
    flush=True,
  )
  if args.out:
    with open(args.out, "a") as f:
      f.write(json.dumps(result) + "\n")
  return result


if __name__ == "__main__":
  main()
