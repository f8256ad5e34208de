"""Is the encoder learning? kNN and linear-probe top-1 of its frozen features.

    python -m fcmae.probe --checkpoint WORKDIR --data folder:/data/imagenet
    python -m fcmae.probe --checkpoint convnextv2_base_1k_224_fcmae.pt --data imagenet2012 \\
        --data_dir /data/tfds --image_size 224

FCMAE's masked-patch loss does not track finetuning accuracy (the official repository's issue 11),
so pretraining also watches representation quality, as self-supervised codebases of other
families do. Features: the plain dense encoder (no mask), globally average-pooled, at the run's
compute dtype, on eval-preprocessed images (resize + center crop). The memory bank / probe
training set is a fixed random subset of the training split (`train_examples`); every
validation image is counted exactly once on any number of processes (padding is masked).

- kNN (`knn_top1`): weighted k-nearest neighbours on cosine similarity, each neighbour voting
  exp(similarity / temperature) for its class (k 20, temperature 0.07, as in DINO and
  solo-learn's online kNN).
- Linear probe (`linear_top1`): closed-form ridge regression from standardized features (and a
  bias) to one-hot labels, as big_vision's few-shot evaluators; its L2 strength is chosen on a
  fifth of the training subset held out, then refit on all of it.

`--checkpoint` takes a train.py or finetune.py workdir or checkpoint, a `models.convert` output,
or published PyTorch weights (official, Hugging Face, timm), local or hf:REPO[@REVISION] on the
Hugging Face Hub: whatever init_from takes.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import numpy as np

from core import errors, sharding, storage
from data import eval_pipeline, on_device, sources
from data.info import IMAGENET_MEAN, IMAGENET_STD
from models import convnextv2

L2_GRID = tuple(10.0**e for e in range(-3, 4))  # times the number of training examples


@dataclasses.dataclass(frozen=True)
class Settings:
  """The data and the probes of a run's monitor (config.probe, config.data)."""

  data: str
  data_dir: str | None
  image_size: int
  train_examples: int = 10_000
  k: int = 20
  temperature: float = 0.07
  batch_size: int = 256  # global, for embedding
  channels: int = 3
  mean: tuple[float, ...] = IMAGENET_MEAN  # the normalisation of the run (data/normalization.py)
  std: tuple[float, ...] = IMAGENET_STD

  @classmethod
  def from_config(cls, config, stats=None) -> Settings:
    """The monitors of a pretraining config: on probe.data when it names a labeled source, else
    on data.name; images normalised as the run's (`stats`, data/normalization.py)."""
    return cls(
      data=config.probe.data or config.data.name,
      data_dir=config.data.data_dir or None,
      image_size=config.data.image_size,
      train_examples=config.probe.train_examples,
      k=config.probe.k,
      temperature=config.probe.temperature,
      batch_size=config.probe.batch_size or config.batch_size,
      channels=config.model.in_chans,
      mean=tuple(stats.mean) if stats else IMAGENET_MEAN,
      std=tuple(stats.std) if stats else IMAGENET_STD,
    )


# ----------------------------------------------------------------------------------------------
# The two probes, on host numpy features.


def knn_top1(
  train_x,
  train_y,
  val_x,
  val_y,
  num_classes: int,
  *,
  k: int = 20,
  temperature: float = 0.07,
  chunk: int = 1024,
) -> float:
  """Top-1 (%) of weighted kNN: cosine similarity, votes exp(similarity / temperature)."""
  normalize = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  bank, queries = normalize(train_x.astype(np.float32)), normalize(val_x.astype(np.float32))
  k = min(k, len(bank))
  correct = 0
  for start in range(0, len(queries), chunk):
    sims = queries[start : start + chunk] @ bank.T  # (n, N)
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (n, k)
    weights = np.exp(np.take_along_axis(sims, nearest, axis=1) / temperature)
    votes = np.zeros((len(nearest), num_classes))
    np.add.at(votes, (np.arange(len(nearest))[:, None], train_y[nearest]), weights)
    correct += int(np.sum(votes.argmax(1) == val_y[start : start + chunk]))
  return 100.0 * correct / len(queries)


def _ridge_weights(x, y_onehot, l2: float):
  return np.linalg.solve(x.T @ x + l2 * np.eye(x.shape[1]), x.T @ y_onehot)


def ridge_top1(
  train_x, train_y, val_x, val_y, num_classes: int, l2_grid=L2_GRID
) -> tuple[float, float]:
  """(top-1 %, the chosen L2) of a ridge-regression probe on standardized features + bias."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  design = lambda x: np.concatenate([(x - mean) / std, np.ones((len(x), 1))], axis=1).astype(
    np.float64
  )
  x, v = design(train_x), design(val_x)
  onehot = np.eye(num_classes)[train_y]
  held = np.arange(len(x)) % 5 == 0  # a fifth held out to choose the L2 strength
  fit = ~held if held.any() and (~held).any() else np.ones(len(x), bool)
  accuracy = lambda w, a, labels: float(np.mean((a @ w).argmax(1) == labels))
  scores = [
    accuracy(_ridge_weights(x[fit], onehot[fit], l2 * fit.sum()), x[held], train_y[held])
    if held.any()
    else 0.0
    for l2 in l2_grid
  ]
  l2 = l2_grid[int(np.argmax(scores))]
  return 100.0 * accuracy(_ridge_weights(x, onehot, l2 * len(x)), v, val_y), l2


# ----------------------------------------------------------------------------------------------
# Features of a dataset, sharded like the run.


class Monitor:
  """Embeds the probe sets with an encoder and runs both probes: __call__(encoder_params) ->
  {knn_top1, linear_top1, linear_l2, num_examples}. The params may be sharded over a mesh; the
  batches are sharded over the same devices."""

  def __init__(self, settings: Settings, variant: str, **model_options):
    self.settings = settings
    info = sources.dataset_info(settings.data, settings.data_dir)
    self.num_classes = info.num_classes
    self.train_split = f"train[:{settings.train_examples}]"
    apply_fn, _ = convnextv2.build(variant, num_classes=0, abstract=True, **model_options)
    normalize = lambda images: on_device.normalize(images, settings.mean, settings.std)
    self._embed = jax.jit(lambda params, images: apply_fn(params, normalize(images)))

  def features(self, params, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, C) float32, labels (N,)) of every example of `split`, in order."""
    s = self.settings
    mesh = jax.tree.leaves(params)[0].sharding.mesh
    batch_sharding = sharding.batch_sharding(mesh)
    local_devices = mesh.size // jax.process_count()
    local = max(s.batch_size // jax.process_count() // local_devices, 1) * local_devices
    xs, ys = [], []
    for batch in eval_pipeline.eval_iterator(
      s.data,
      data_dir=s.data_dir,
      image_size=s.image_size,
      local_batch_size=local,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      split=split,
      channels=s.channels,
    ):
      images = sharding.make_global_batch({"image": batch["image"]}, batch_sharding)["image"]
      out = self._embed(params, images)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather(
          {"x": out, "y": batch["label"], "m": batch["mask"]}, tiled=False
        )
        x, y, m = (np.concatenate(list(gathered[k])) for k in ("x", "y", "m"))
      else:
        x, y, m = np.asarray(out), batch["label"], batch["mask"]
      keep = m > 0  # padding rows, and nothing else, are dropped: each example counts once
      xs.append(np.asarray(x, np.float32)[keep])
      ys.append(np.asarray(y)[keep])
    return np.concatenate(xs), np.concatenate(ys)

  def __call__(self, encoder_params) -> dict:
    s = self.settings
    train_x, train_y = self.features(encoder_params, self.train_split)
    val_x, val_y = self.features(encoder_params, "validation")
    linear, l2 = ridge_top1(train_x, train_y, val_x, val_y, self.num_classes)
    return {
      "knn_top1": knn_top1(
        train_x, train_y, val_x, val_y, self.num_classes, k=s.k, temperature=s.temperature
      ),
      "linear_top1": linear,
      "linear_l2": l2,
      "num_examples": int(len(val_y)),
    }


# ----------------------------------------------------------------------------------------------
# Command line.


def encoder_params(tree: dict) -> dict:
  """The encoder of any params tree: FCMAE's 'encoder', or a classifier without norm and head."""
  tree = tree.get("encoder", tree)
  return {k: v for k, v in tree.items() if k not in ("norm", "head")}


def main(argv=None) -> dict:
  from models import pretrained

  parser = argparse.ArgumentParser(
    prog="python -m fcmae.probe", description=__doc__.splitlines()[0]
  )
  parser.add_argument(
    "--checkpoint",
    required=True,
    help="workdir, checkpoint, converted or PyTorch weights, or hf:REPO[@REVISION] (whatever "
    "init_from takes)",
  )
  parser.add_argument("--data", required=True, help="folder:PATH, demo, or a prepared TFDS name")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--train_examples", type=int, default=Settings.train_examples)
  parser.add_argument("--k", type=int, default=Settings.k)
  parser.add_argument("--temperature", type=float, default=Settings.temperature)
  parser.add_argument("--batch_size", type=int, default=Settings.batch_size)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = parser.parse_args(argv)
  storage.setup()

  params = encoder_params(pretrained.read_params(args.checkpoint))
  variant = convnextv2.variant_of(params)
  settings = Settings(
    args.data,
    args.data_dir,
    args.image_size,
    args.train_examples,
    args.k,
    args.temperature,
    args.batch_size,
  )
  monitor = Monitor(settings, variant, dtype=args.dtype)
  result = monitor(jax.device_put(params, sharding.replicated(sharding.make_mesh())))
  print(
    f"{args.checkpoint} ({variant}) on {args.data}: knn_top1 {result['knn_top1']:.2f}, "
    f"linear_top1 {result['linear_top1']:.2f} (l2 {result['linear_l2']:g} x n), "
    f"num_examples {result['num_examples']}"
  )
  return result


if __name__ == "__main__":
  errors.guarded(main)(None)
