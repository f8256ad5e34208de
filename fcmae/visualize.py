"""Reconstruction pictures of an FCMAE model: a labelled figure, one row per image.

Columns, named in the figure: original | masked input (masked patches grey) | prediction (every
patch) | prediction + visible (the prediction pasted under the masked patches of the original).
Above them, the step and the masked-patch loss of these very images. With norm_pix_loss the
model predicts each patch's pixels normalized by that patch's mean and standard deviation; they
are mapped back with the true patch statistics, as MAE does. Tiles are drawn at least 128
pixels wide. During training the figures go to WORKDIR/reconstructions/ and to TensorBoard.

    python -m fcmae.visualize --checkpoint WORKDIR --out recon.png            # built-in data
    python -m fcmae.visualize --checkpoint WORKDIR --images a.jpg b.png --out recon.png

WORKDIR is a train.py work directory (its config.json says the model; the latest checkpoint
is used) or one of its checkpoints/<step> directories.
"""

from __future__ import annotations

import argparse
import io
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core import errors, logs, storage, wandb_writer
from core.errors import UserError
from data import eval_pipeline, on_device
from data.info import IMAGENET_MEAN, IMAGENET_STD
from fcmae import masking
from fcmae import model as fcmae_model
from models import pretrained

NUM_IMAGES = 8
COLUMNS = ("original", "masked input", "prediction", "prediction + visible")
HEADER = 36  # pixels above the tiles: the title line and the column names


class ImageError(UserError, ValueError):
  """An image or a run that cannot be read."""


def reconstruction_grid(
  images, pred, mask, norm_pix_loss: bool, mean=IMAGENET_MEAN, std=IMAGENET_STD
) -> np.ndarray:
  """uint8 (B*S, 4*S, 3) picture from images (B, S, S, C) normalized with (mean, std),
  pred (B, L, 32*32*C) and mask (B, L). One channel is shown grey, two or more than three by
  their first channel (grey) or first three (as RGB)."""
  images = np.asarray(images, np.float64)
  pred, mask = np.asarray(pred, np.float64), np.asarray(mask, np.float64)
  p = masking.PATCH_SIZE
  grid = masking.grid_shape(images.shape[1:3])
  b = images.shape[0]
  c = images.shape[-1]
  target = fcmae_model.patchify(images, grid).reshape(b, grid[0] * grid[1], -1)  # (B, L, p*p*C)
  if norm_pix_loss:
    patch_mean = target.mean(-1, keepdims=True)
    patch_std = np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    pred = pred * patch_std + patch_mean
  as_image = lambda patches: fcmae_model.unpatchify(patches.reshape(b, -1, p, p, c), grid)
  recon = as_image(pred)
  pixel_mask = as_image(np.repeat(mask[..., None], p * p * c, axis=-1))
  pasted = images * (1 - pixel_mask) + recon * pixel_mask
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  shown = [0, 1, 2] if c >= 3 else [0, 0, 0]

  def to_uint8(x):
    return np.clip((x * std + mean)[..., shown] * 255 + 0.5, 0, 255).astype(np.uint8)

  pixel_mask = pixel_mask[..., shown]
  grey_masked = np.where(pixel_mask > 0, 128, to_uint8(images)).astype(np.uint8)
  columns = [to_uint8(images), grey_masked, to_uint8(recon), to_uint8(pasted)]
  rows = [np.concatenate([c[i] for c in columns], axis=1) for i in range(images.shape[0])]
  return np.concatenate(rows, axis=0)


def figure(
  images, pred, mask, norm_pix_loss: bool, title: str, mean=IMAGENET_MEAN, std=IMAGENET_STD
) -> np.ndarray:
  """uint8 (HEADER + B*T, 4*T, 3): `reconstruction_grid` with its columns named and `title` above,
  each tile scaled (nearest) to T >= 128 pixels."""
  grid = reconstruction_grid(images, pred, mask, norm_pix_loss, mean, std)
  size = np.asarray(images).shape[1]
  scale = -(-128 // size)
  tiles = grid.repeat(scale, axis=0).repeat(scale, axis=1)
  tile = size * scale
  canvas = Image.new("RGB", (tiles.shape[1], tiles.shape[0] + HEADER), "white")
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()
  draw.text((4, 3), title, fill="black", font=font)
  for j, name in enumerate(COLUMNS):
    draw.text((j * tile + 4, HEADER - 15), name, fill="black", font=font)
  canvas.paste(Image.fromarray(tiles), (0, HEADER))
  return np.asarray(canvas)


def title(what: str, loss: float, mask) -> str:
  """'step 250: masked-patch loss 0.712 (6 of 16 patches visible)' for a figure."""
  mask = np.asarray(mask)
  visible = int(mask.shape[1] - mask[0].sum())
  return f"{what}: masked-patch loss {loss:.3f} ({visible} of {mask.shape[1]} patches visible)"


def save_png(picture: np.ndarray, path: str) -> str:
  """Writes the figure to a local path or a gs:// URL, whole."""
  storage.write_bytes(path, png_bytes(picture))
  return path


def png_bytes(picture: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(picture).save(out, format="PNG")
  return out.getvalue()


def sample_images(
  config, num: int = NUM_IMAGES, mean=IMAGENET_MEAN, std=IMAGENET_STD
) -> np.ndarray:
  """The first `num` readable validation images of the config's dataset (of an unlabeled
  folder: the first files of its list, the user's own images), eval-preprocessed, normalized."""
  batches = eval_pipeline.eval_iterator(
    config.data.name,
    data_dir=config.data.data_dir or None,
    image_size=config.data.image_size,
    local_batch_size=num,
    channels=config.model.get("in_chans", 3),  # a run's config.json from before in_chans
  )
  images = []
  for batch in batches:  # unreadable images are padding (mask 0): passed over
    images += list(batch["image"][batch["mask"] > 0])
    if len(images) >= num:
      break
  return np.asarray(on_device.normalize(np.stack(images[:num]), mean, std))


def load_images(paths, image_size: int) -> np.ndarray:
  """Image files -> (B, S, S, 3) normalized, resized (shorter side) and center-cropped."""
  out = []
  for path in paths:
    try:
      image = Image.open(path).convert("RGB")
    except OSError as e:
      raise ImageError(f"Cannot read image {path}: {e}") from None
    scale = image_size / min(image.size)
    image = image.resize(
      (
        max(image_size, round(image.size[0] * scale)),
        max(image_size, round(image.size[1] * scale)),
      ),
      Image.BICUBIC,
    )
    left, top = (image.size[0] - image_size) // 2, (image.size[1] - image_size) // 2
    image = np.asarray(image.crop((left, top, left + image_size, top + image_size)), np.float32)
    out.append((image / 255 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD))
  return np.stack(out).astype(np.float32)


class Reconstructions:
  """For the training loop: WORKDIR/reconstructions/step_<step>.png and the same figure in
  WORKDIR/tensorboard, on fixed images with fixed masks."""

  def __init__(self, config, loss_fn, workdir: str, stats, num: int = NUM_IMAGES):
    self.config, self.num, self.stats = config, num, stats  # stats: data/normalization.py
    self.directory = os.path.join(workdir, "reconstructions")
    self._tensorboard = os.path.join(workdir, "tensorboard")
    self._loss_fn = jax.jit(loss_fn)
    self._images = None
    self.last_loss = None

  def write(self, params, step: int) -> str | None:
    if self._images is None:
      self._images = sample_images(self.config, self.num, self.stats.mean, self.stats.std)
      grid = masking.grid_shape(self.config.data.image_size)
      self._mask = masking.random_mask(
        jax.random.key(0), len(self._images), grid[0] * grid[1], self.config.fcmae.mask_ratio
      )
    params = jax.device_put(params, jax.devices()[0]) if jax.process_count() == 1 else params
    loss, pred = self._loss_fn(params, jnp.asarray(self._images), self._mask)
    self.last_loss = float(loss)
    if jax.process_index() != 0:
      return None
    picture = figure(
      self._images,
      pred,
      self._mask,
      self.config.fcmae.norm_pix_loss,
      title(f"step {step}", self.last_loss, self._mask),
      self.stats.mean,
      self.stats.std,
    )
    png = png_bytes(picture)
    writer = logs.EventWriter(self._tensorboard)
    writer.image(step, "reconstructions", picture)
    writer.close()
    wandb_writer.image(step, "reconstructions", picture)  # with log.wandb
    path = os.path.join(self.directory, f"step_{step:07d}.png")
    storage.write_bytes(path, png)
    return path


def load_run_config(path: str) -> ml_collections.ConfigDict:
  """The config.json a train.py run saved in its workdir (searched upward from `path`)."""
  path = storage.absolute(path).rstrip("/")
  for candidate in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
    config_path = os.path.join(candidate, "config.json")
    if storage.isfile(config_path):
      return ml_collections.ConfigDict(json.loads(storage.read_text(config_path)))
  raise ImageError(
    f"No config.json of a train.py run at or above {path}: --checkpoint takes a "
    "train.py workdir or one of its checkpoints/<step> directories."
  )


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True, help="train.py workdir or checkpoint dir")
  parser.add_argument(
    "--images",
    nargs="*",
    default=None,
    help="image files (default: the first validation images of the run's dataset)",
  )
  parser.add_argument("--out", default="reconstructions.png")
  parser.add_argument("--seed", type=int, default=0, help="seed of the random masks")
  args = parser.parse_args(argv)
  storage.setup()

  config = load_run_config(args.checkpoint)
  loss_fn, _ = fcmae_model.from_config(config, abstract=True)
  params = pretrained.restore_train_params(args.checkpoint)
  images = (
    load_images(args.images, config.data.image_size) if args.images else sample_images(config)
  )
  grid = masking.grid_shape(config.data.image_size)
  mask = masking.random_mask(
    jax.random.key(args.seed), len(images), grid[0] * grid[1], config.fcmae.mask_ratio
  )
  loss, pred = jax.jit(loss_fn)(params, jnp.asarray(images), mask)
  name = os.path.basename(storage.absolute(args.checkpoint).rstrip("/"))
  save_png(
    figure(images, pred, mask, config.fcmae.norm_pix_loss, title(name, float(loss), mask)), args.out
  )
  print(f"Wrote {args.out} ({len(images)} images, masked-patch loss {float(loss):.4f}).")


if __name__ == "__main__":
  errors.guarded(main)(None)
