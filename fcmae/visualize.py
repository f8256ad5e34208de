"""Reconstruction pictures of an FCMAE model: a PNG grid, one row per image.

Columns: original | masked input | prediction | prediction pasted onto the visible patches.
With norm_pix_loss the model predicts each patch's pixels normalized by that patch's mean and
standard deviation; they are mapped back with the true patch statistics, as MAE does.

    python -m fcmae.visualize --checkpoint WORKDIR --out recon.png            # built-in data
    python -m fcmae.visualize --checkpoint WORKDIR --images a.jpg b.png --out recon.png

WORKDIR is a train.py work directory (its config.json says the model; the latest checkpoint
is used) or one of its checkpoints/<step> directories.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from data import augment, on_device, pipeline
from fcmae import masking
from fcmae import model as fcmae_model
from trainer import checkpoint

NUM_IMAGES = 8


class ImageError(ValueError):
  """An image or a run that cannot be read."""
  user_error = True


def reconstruction_grid(images, pred, mask, norm_pix_loss: bool) -> np.ndarray:
  """uint8 (B*S, 4*S, 3) picture from normalized images (B, S, S, 3), pred (B, L, 3072) and
  mask (B, L)."""
  images = np.asarray(images, np.float64)
  pred, mask = np.asarray(pred, np.float64), np.asarray(mask, np.float64)
  p = masking.PATCH_SIZE
  grid = masking.grid_shape(images.shape[1:3])
  b = images.shape[0]
  target = fcmae_model.patchify(images, grid).reshape(b, grid[0] * grid[1], -1)   # (B, L, 3072)
  if norm_pix_loss:
    mean = target.mean(-1, keepdims=True)
    std = np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    pred = pred * std + mean
  as_image = lambda patches: fcmae_model.unpatchify(patches.reshape(b, -1, p, p, 3), grid)
  recon = as_image(pred)
  pixel_mask = as_image(np.repeat(mask[..., None], p * p * 3, axis=-1))
  pasted = images * (1 - pixel_mask) + recon * pixel_mask
  mean, std = np.asarray(augment.IMAGENET_MEAN), np.asarray(augment.IMAGENET_STD)
  to_uint8 = lambda x: np.clip((x * std + mean) * 255 + 0.5, 0, 255).astype(np.uint8)
  grey_masked = np.where(pixel_mask > 0, 128, to_uint8(images)).astype(np.uint8)
  columns = [to_uint8(images), grey_masked, to_uint8(recon), to_uint8(pasted)]
  rows = [np.concatenate([c[i] for c in columns], axis=1) for i in range(images.shape[0])]
  return np.concatenate(rows, axis=0)


def save_png(picture: np.ndarray, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.png"
  Image.fromarray(picture).save(tmp)
  os.replace(tmp, path)
  return path


def sample_images(config, num: int = NUM_IMAGES) -> np.ndarray:
  """The first `num` validation images of the config's dataset, eval-preprocessed, normalized."""
  batches = pipeline.eval_iterator(config.data.name, data_dir=config.data.data_dir or None,
                                   image_size=config.data.image_size, local_batch_size=num)
  return np.asarray(on_device.normalize(next(iter(batches))["image"][:num]))


def load_images(paths, image_size: int) -> np.ndarray:
  """Image files -> (B, S, S, 3) normalized, resized (shorter side) and center-cropped."""
  out = []
  for path in paths:
    try:
      image = Image.open(path).convert("RGB")
    except OSError as e:
      raise ImageError(f"Cannot read image {path}: {e}") from None
    scale = image_size / min(image.size)
    image = image.resize((max(image_size, round(image.size[0] * scale)),
                          max(image_size, round(image.size[1] * scale))), Image.BICUBIC)
    left, top = (image.size[0] - image_size) // 2, (image.size[1] - image_size) // 2
    image = np.asarray(image.crop((left, top, left + image_size, top + image_size)), np.float32)
    out.append((image / 255 - np.asarray(augment.IMAGENET_MEAN)) / np.asarray(augment.IMAGENET_STD))
  return np.stack(out).astype(np.float32)


class Reconstructions:
  """Writes DIR/step_<step>.png for the training loop, on fixed images and fixed masks."""

  def __init__(self, config, loss_fn, directory: str, num: int = NUM_IMAGES):
    self.config, self.directory, self.num = config, directory, num
    self._loss_fn = jax.jit(loss_fn)
    self._images = None
    self.last_loss = None

  def write(self, params, step: int) -> str | None:
    if self._images is None:
      self._images = sample_images(self.config, self.num)
      grid = masking.grid_shape(self.config.data.image_size)
      self._mask = masking.random_mask(jax.random.key(0), len(self._images), grid[0] * grid[1],
                                       self.config.fcmae.mask_ratio)
    params = jax.device_put(params, jax.devices()[0]) if jax.process_count() == 1 else params
    loss, pred = self._loss_fn(params, jnp.asarray(self._images), self._mask)
    self.last_loss = float(loss)
    if jax.process_index() != 0:
      return None
    picture = reconstruction_grid(self._images, pred, self._mask, self.config.fcmae.norm_pix_loss)
    return save_png(picture, os.path.join(self.directory, f"step_{step:07d}.png"))


def load_run_config(path: str) -> ml_collections.ConfigDict:
  """The config.json a train.py run saved in its workdir (searched upward from `path`)."""
  path = os.path.abspath(path)
  for candidate in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
    config_path = os.path.join(candidate, "config.json")
    if os.path.isfile(config_path):
      with open(config_path) as f:
        return ml_collections.ConfigDict(json.load(f))
  raise ImageError(f"No config.json of a train.py run at or above {path}: --checkpoint takes a "
                   "train.py workdir or one of its checkpoints/<step> directories.")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True, help="train.py workdir or checkpoint dir")
  parser.add_argument("--images", nargs="*", default=None, help="image files (default: the "
                      "first validation images of the run's dataset)")
  parser.add_argument("--out", default="reconstructions.png")
  parser.add_argument("--seed", type=int, default=0, help="seed of the random masks")
  args = parser.parse_args(argv)

  config = load_run_config(args.checkpoint)
  loss_fn, _ = fcmae_model.from_config(config, abstract=True)
  params = checkpoint.restore_params(args.checkpoint)
  images = (load_images(args.images, config.data.image_size) if args.images
            else sample_images(config))
  grid = masking.grid_shape(config.data.image_size)
  mask = masking.random_mask(jax.random.key(args.seed), len(images), grid[0] * grid[1],
                             config.fcmae.mask_ratio)
  loss, pred = jax.jit(loss_fn)(params, jnp.asarray(images), mask)
  save_png(reconstruction_grid(images, pred, mask, config.fcmae.norm_pix_loss), args.out)
  print(f"Wrote {args.out} ({len(images)} images, masked-patch loss {float(loss):.4f}).")


if __name__ == "__main__":
  from trainer import cli
  cli.guarded(main)(None)
