"""FCMAE pretraining: the task the shared loop runs for train.py.

Per step: a fresh random mask per image (from the step's rng), the FCMAE loss on the masked
images, and (at eval intervals) a PNG of reconstructions in WORKDIR/reconstructions/.
"""

from __future__ import annotations

import os

import jax

from fcmae import data, loop, masking, visualize
from fcmae import model as fcmae_model


def build_model(config, abstract: bool = False):
  """(loss_fn, params) of the config's FCMAE model."""
  return fcmae_model.build(
      config.model.variant, impl=config.fcmae.impl, image_size=config.data.image_size,
      seed=config.seed, mask_ratio=config.fcmae.mask_ratio,
      decoder_dim=config.fcmae.decoder_dim, decoder_depth=config.fcmae.decoder_depth,
      norm_pix_loss=config.fcmae.norm_pix_loss, dtype=config.model.dtype,
      depthwise_impl=config.model.depthwise_impl or None, scan=config.model.scan,
      remat=config.model.remat, drop_path_rate=config.model.drop_path_rate, abstract=abstract)


def make_task(config, workdir: str) -> loop.Task:
  loss_fn, _ = build_model(config, abstract=True)
  grid = masking.grid_shape(config.data.image_size)
  num_patches = grid[0] * grid[1]
  info = data.dataset_info(config.data.name, config.data.data_dir or None)

  def task_loss(params, batch, rng):
    mask_rng, drop_rng = jax.random.split(rng)
    images = batch["image"]
    mask = masking.random_mask(mask_rng, images.shape[0], num_patches, config.fcmae.mask_ratio)
    loss, _ = loss_fn(params, images, mask,
                      rng=drop_rng if config.model.drop_path_rate > 0 else None)
    return loss, {}


  pictures = visualize.Reconstructions(config, loss_fn, os.path.join(workdir, "reconstructions"))

  def evaluate(state, step):
    path = pictures.write(state["params"], step)
    return {"reconstruction_loss": pictures.last_loss} if path else {}

  return loop.Task(
      init_params=lambda: build_model(config)[1],  # traced by the loop: born sharded
      loss_fn=task_loss,
      train_batches=loop.train_stream(config, "pretrain"),
      steps_per_epoch=loop.steps_per_epoch(config, info),
      evaluate=evaluate,
      skipped_images=data.skipped_images,
  )
