"""The reference's input pipeline, as the peer the benchmark times ours against: PIL decoding,
torchvision's RandomResizedCrop / RandomHorizontalFlip / Resize / CenterCrop and timm's
RandAugment written with PIL directly (torchvision is not installed beside torch here), in
torch DataLoader worker processes, uint8 batches out (as timm's prefetching loader hands them
to the GPU, normalised there).
"""

from __future__ import annotations

import math
import os
import random

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

BICUBIC = Image.Resampling.BICUBIC
FILL = (124, 116, 104)  # timm's RandAugment fill, round(255 * IMAGENET_MEAN)


def rrc_window(width: int, height: int, scale, ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """torchvision ``RandomResizedCrop.get_params``: (top, left, height, width)."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * random.uniform(*scale)
    aspect = math.exp(random.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return random.randint(0, height - h), random.randint(0, width - w), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _rand_augment(img: Image.Image, magnitude=9.0, std=0.5, layers=2, prob=0.5) -> Image.Image:
  """timm ``rand-m9-mstd0.5-inc1`` (the increasing op set) with PIL, as timm applies it."""
  ops = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
  )
  for name in random.choices(ops, k=layers):
    if random.random() > prob:
      continue
    level = min(max(random.gauss(magnitude, std), 0.0), 10.0) / 10.0
    sign = -1.0 if random.random() < 0.5 else 1.0
    w, h = img.size
    affine = dict(resample=BICUBIC, fillcolor=FILL)
    if name == "AutoContrast":
      img = ImageOps.autocontrast(img)
    elif name == "Equalize":
      img = ImageOps.equalize(img)
    elif name == "Invert":
      img = ImageOps.invert(img)
    elif name == "Rotate":
      img = img.rotate(sign * level * 30.0, **affine)
    elif name == "Posterize":
      bits = 4 - int(level * 4)  # 0 bits keep nothing (Pillow 13 refuses 0)
      img = ImageOps.posterize(img, bits) if bits > 0 else Image.new("RGB", img.size)
    elif name == "Solarize":
      img = ImageOps.solarize(img, 256 - int(level * 256))
    elif name == "SolarizeAdd":
      add = int(level * 110)
      img = img.point([min(255, i + add) if i < 128 else i for i in range(256)] * 3)
    elif name in ("Color", "Contrast", "Brightness", "Sharpness"):
      factor = max(0.1, 1.0 + sign * level * 0.9)
      img = getattr(ImageEnhance, name)(img).enhance(factor)
    elif name == "ShearX":
      img = img.transform(img.size, Image.AFFINE, (1, sign * level * 0.3, 0, 0, 1, 0), **affine)
    elif name == "ShearY":
      img = img.transform(img.size, Image.AFFINE, (1, 0, 0, sign * level * 0.3, 1, 0), **affine)
    elif name == "TranslateXRel":
      dx = sign * level * 0.45 * w
      img = img.transform(img.size, Image.AFFINE, (1, 0, dx, 0, 1, 0), **affine)
    else:
      dy = sign * level * 0.45 * h
      img = img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, dy), **affine)
  return img


class Images:
  """A torch map-style dataset of a folder's JPEGs, transformed as the reference does:
  recipe 'pretrain' (RandomResizedCrop(0.2-1) + flip), 'finetune' (RandomResizedCrop(0.08-1) +
  flip + RandAugment) or 'eval' (Resize(size / 0.875) + CenterCrop). uint8 [S, S, 3] out."""

  def __init__(self, files: list[str], recipe: str, size: int):
    self.files, self.recipe, self.size = files, recipe, size

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int):
    import torch

    with open(self.files[index], "rb") as f:
      img = Image.open(f).convert("RGB")
    s = self.size
    if self.recipe == "eval":
      w, h = img.size
      short = int(s / 0.875)
      size = (short, short * h // w) if w <= h else (short * w // h, short)
      img = img.resize(size, BICUBIC)
      left, top = int(round((size[0] - s) / 2)), int(round((size[1] - s) / 2))
      img = img.crop((left, top, left + s, top + s))
    else:
      scale = (0.2, 1.0) if self.recipe == "pretrain" else (0.08, 1.0)
      top, left, h, w = rrc_window(*img.size, scale)
      img = img.resize((s, s), BICUBIC, box=(left, top, left + w, top + h))
      if random.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
      if self.recipe == "finetune":
        img = _rand_augment(img)
    return torch.from_numpy(np.asarray(img).copy())


def batches(root: str, recipe: str, size: int, batch: int, workers: int):
  """Endless uint8 batches [B, S, S, 3] from `workers` DataLoader processes (shuffled)."""
  import torch

  torch.set_num_threads(1)
  files = sorted(
    os.path.join(d, n)
    for d, _, names in os.walk(os.path.join(root, "train"))
    for n in names
    if n.lower().endswith((".jpg", ".jpeg"))
  )
  loader = torch.utils.data.DataLoader(
    Images(files, recipe, size),
    batch_size=batch,
    sampler=torch.utils.data.RandomSampler(files, replacement=True, num_samples=1 << 40),
    num_workers=workers,
    prefetch_factor=2,
    persistent_workers=True,
  )
  for images in loader:
    yield {"image": images.numpy()}
