"""FCMAE pretraining: the task the shared loop runs for train.py.

Per step: a fresh random mask per image (from the image's own key), the FCMAE loss on the masked
images. Before the first step and every eval_every_steps: a figure of reconstructions
(WORKDIR/reconstructions/, TensorBoard) and, on a labelled dataset, the kNN and linear-probe
top-1 of the encoder's features (fcmae/probe.py; config.probe.enabled=False turns them off), on
probe.data, or on the training data when it has labels (an unlabeled folder has none: they are
skipped, with a line that says so). The data's file list and normalisation statistics are fixed
first (data/prepare.py).
A fresh run starts from config.init_from when it is set (fcmae/pretrained.py).
"""

from __future__ import annotations

from core import task as task_lib
from core.logs import say
from data import config_input, normalization, on_device
from data.info import DatasetError, DatasetInfo
from fcmae import masking
from fcmae import model as fcmae_model
from models import convnextv2, layers


def _monitored_data(config, info: DatasetInfo) -> str | None:
  """The data the kNN and linear-probe monitors evaluate on: probe.data (which must have labels),
  else data.name when it has labels; None (and a line that says why) when there is none."""
  from data import sources

  if config.probe.data:
    probe_info = sources.dataset_info(config.probe.data, config.data.data_dir or None)
    if probe_info.num_classes < 2:
      raise DatasetError(
        f"probe.data={config.probe.data!r} has no labels: the monitors need a labeled source "
        "(a folder: with train/<class>/ and val/<class>/ folders, or a TFDS name)"
      )
    return config.probe.data
  if info.num_classes > 1:
    return config.data.name
  say(
    f"Monitors: kNN and linear probe skipped: {config.data.name} has no labels (set "
    "--config.probe.data to a labeled source, a folder: with class folders or a TFDS name, to "
    "evaluate on it); the reconstruction pictures are drawn from its images."
  )
  return None


def make_task(config, workdir: str | None, info: DatasetInfo | None = None) -> task_lib.Task:
  """The pretraining task of `config`, writing pictures into `workdir`. `info`: the dataset's
  sizes, when they are known without reading it (--compile_only)."""
  loss_fn, _ = fcmae_model.from_config(config, abstract=True)
  grid = masking.grid_shape(config.data.image_size)
  num_patches = grid[0] * grid[1]
  if info is None:  # the input pipeline (TensorFlow) only where data is read
    from data import prepare

    if config.probe.data and workdir and config.probe.enabled:
      _monitored_data(config, DatasetInfo(0, 0, 0))  # refused before anything is written
    prepared = prepare.prepare(config, workdir)
    info, stats = prepared.info, prepared.stats
  else:
    stats = normalization.given(config) or normalization.placeholder(config.model.in_chans)

  def task_loss(params, batch, rng):
    del rng  # the mask and drop path are drawn per example, from the example's own key
    images = on_device.normalize(batch["image"], stats.mean, stats.std)
    keys = batch["key"]
    mask = masking.random_mask(
      layers.fold_in(keys, 0), images.shape[0], num_patches, config.fcmae.mask_ratio
    )
    drop_keys = layers.fold_in(keys, 1) if config.model.drop_path_rate > 0 else None
    loss, _ = loss_fn(params, images, mask, rng=drop_keys)
    return loss, {}

  pictures = monitor = None
  if workdir:  # pictures and monitors read the validation data
    from fcmae import probe, visualize

    pictures = visualize.Reconstructions(config, loss_fn, workdir, stats)
    monitored = _monitored_data(config, info) if config.probe.enabled else None
    if monitored is not None:
      monitor = probe.Monitor(
        probe.Settings.from_config(config, stats),
        config.model.variant,
        **convnextv2.config_options(config.model),
      )

  def load_pretrained(fresh):
    if not config.init_from:
      return fresh
    from fcmae import pretrained

    params, line = pretrained.load(fresh, config.init_from, config.model.in_chans)
    say(line)
    return params

  def evaluate(state, step):
    pictures.write(state["params"], step)
    out = {"reconstruction_loss": pictures.last_loss}
    if monitor is not None:
      out.update(monitor(state["params"]["encoder"]))
    return out

  return task_lib.Task(
    fresh_params=lambda: fcmae_model.from_config(config)[1],  # traced by the loop: born sharded
    loss_fn=task_loss,
    train_batches=config_input.train_stream(config, "pretrain"),
    steps_per_epoch=config_input.steps_per_epoch(config, info),
    load_pretrained=load_pretrained,
    evaluate=evaluate,
    skipped_images=config_input.skipped_images,
    evaluate_at_start=monitor is not None,
    shown=("reconstruction_loss", "knn_top1", "linear_top1"),
  )
