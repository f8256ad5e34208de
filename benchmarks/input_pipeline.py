"""Does the input keep up? Images per second of the training and evaluation pipelines.

    python -m benchmarks.input_pipeline --data folder:/data/imagenet --augment pretrain --batch 64 --batches 50
    python -m benchmarks.input_pipeline --make-photos /tmp/photos        # an ImageNet-like folder
    python -m benchmarks.input_pipeline --data folder:/tmp/photos --augment pretrain --baseline

`--data` is `folder:PATH`, `demo` or a prepared TFDS name (`--data_dir`); `--augment` is the
recipe (pretrain: crop + flip; finetune: + RandAugment; eval: resize + center crop). The
pipeline runs exactly as in training: this process's batches, all host cores (FCMAE_DATA_THREADS
sets fewer), each batch taken as the training loop takes it. The batches are timed in 5 rounds,
each after `--warmup` untimed batches, and the median round is reported. `--baseline` times, in
alternating rounds of the same run, a plain tf.data pipeline that decodes only the crop window
of each JPEG (extract_jpeg_shape + sample_distorted_bounding_box + decode_and_crop_jpeg, as
big_vision and the Flax ImageNet example do), resizes as the pipeline does (bicubic,
antialiased when it shrinks, like PIL) and once more with plain bicubic (cheaper; it aliases),
flips and normalizes.

`--make-photos DIR` writes an ImageNet-like folder from the photographs scikit-image ships
(astronaut, coffee, chelsea, rocket, ...): random crops resized to about 500x375, JPEG quality
90, 10 classes. The last line printed is `img/s: X` (of the pipeline, not the baseline).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

PHOTOS = (
  "astronaut",
  "coffee",
  "chelsea",
  "rocket",
  "hubble_deep_field",
  "retina",
  "immunohistochemistry",
  "camera",
  "grass",
  "gravel",
)  # the last three are greyscale


def make_photos(root: str, per_class: int = 100, seed: int = 0) -> None:
  """ROOT/{train,val}/<photo>/<i>.jpg: random crops of each shipped photograph, ~500x375."""
  from PIL import Image
  from skimage import data as skdata

  rng = np.random.default_rng(seed)
  for name in PHOTOS:
    photo = np.asarray(getattr(skdata, name)())
    if photo.ndim == 2:
      photo = np.stack([photo] * 3, axis=-1)
    photo = photo[..., :3]
    height, width = photo.shape[:2]
    for split, count in (("train", per_class), ("val", max(per_class // 10, 1))):
      folder = os.path.join(root, split, name)
      os.makedirs(folder, exist_ok=True)
      for i in range(count):
        h = int(rng.integers(height // 2, height + 1))
        w = int(rng.integers(width // 2, width + 1))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        size = (500, 375) if rng.random() < 0.5 else (375, 500)
        crop = Image.fromarray(photo[top : top + h, left : left + w]).resize(size, Image.BICUBIC)
        crop.save(os.path.join(folder, f"{i:04d}.jpg"), quality=90)
  print(
    f"Wrote {len(PHOTOS)} classes x {per_class} train / {max(per_class // 10, 1)} val JPEGs "
    f"to {root}."
  )


def time_pipelines(pipelines: dict, batches: int, warmup: int, batch: int, rounds: int = 5) -> dict:
  """{name: images/s} of each iterator, timed in alternating rounds (noise hits all alike): the
  median over rounds of a round's images over its time. A round first takes `warmup` untimed
  batches: what the pipeline buffered while the others were timed (prefetch, steps in flight)."""
  seconds = {name: [] for name in pipelines}
  per_round = max(batches // rounds, 1)
  for _ in range(rounds):
    for name, it in pipelines.items():
      for _ in range(warmup):
        next(it)
      start = time.perf_counter()
      for _ in range(per_round):
        next(it)
      seconds[name].append(time.perf_counter() - start)
  return {name: per_round * batch / statistics.median(s) for name, s in seconds.items()}


def baseline_batches(
  root: str, image_size: int, batch: int, scale=(0.2, 1.0), antialias: bool = True
):
  """The plain tf.data pipeline: decode only the crop window, resize, flip, normalize.
  antialias False: tf.image.resize's plain bicubic (cheaper, aliases when it shrinks)."""
  import tensorflow as tf

  from data import augment, sources

  files = []
  for dirpath, _, names in os.walk(os.path.join(root, "train")):
    files += [os.path.join(dirpath, n) for n in names if n.lower().endswith((".jpg", ".jpeg"))]
  mean = tf.constant(augment.IMAGENET_MEAN) * 255
  std = tf.constant(augment.IMAGENET_STD) * 255

  def load(path):
    data = tf.io.read_file(path)
    shape = tf.io.extract_jpeg_shape(data)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
      shape,
      tf.zeros([0, 0, 4]),
      area_range=scale,
      aspect_ratio_range=(3 / 4, 4 / 3),
      max_attempts=10,
      use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = tf.io.decode_and_crop_jpeg(data, window, channels=3)
    image = tf.image.resize(image, [image_size, image_size], method="bicubic", antialias=antialias)
    image = tf.image.random_flip_left_right(image)
    return (image - mean) / std

  ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files)).repeat()
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(2)
  ds = ds.with_options(sources.tf_options())
  return ds.as_numpy_iterator()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default="demo")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--augment", choices=("pretrain", "finetune", "eval"), default="pretrain")
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--batches", type=int, default=50)
  parser.add_argument("--warmup", type=int, default=5, help="untimed batches before each round")
  parser.add_argument(
    "--baseline",
    action="store_true",
    help="also time the plain tf.data pipeline that decodes only the crop (JPEG folders)",
  )
  parser.add_argument("--make-photos", metavar="DIR", help="write an ImageNet-like folder and exit")
  args = parser.parse_args(argv)
  if args.make_photos:
    make_photos(args.make_photos)
    return

  from data import eval_pipeline, pipeline, sources

  cores = sources.num_threads()
  if args.augment == "eval":

    def eval_forever():
      while True:
        yield from eval_pipeline.eval_iterator(
          args.data, data_dir=args.data_dir, image_size=args.image_size, local_batch_size=args.batch
        )

    batches = eval_forever()
  else:
    options = {"randaugment": "rand-m9-mstd0.5-inc1"} if args.augment == "finetune" else {}
    batches = pipeline.train_iterator(
      args.data,
      data_dir=args.data_dir,
      image_size=args.image_size,
      local_batch_size=args.batch,
      seed=0,
      augment=args.augment,
      augment_options=options,
    )
  first = next(batches)
  print(
    f"{args.data}, {args.augment}, batch {args.batch} at {args.image_size}: image "
    f"{first['image'].dtype} {first['image'].shape}; {cores} threads"
  )
  pipelines = {f"pipeline ({args.augment})": batches}
  if args.baseline:
    root = args.data[len("folder:") :] if args.data.startswith("folder:") else None
    if root is None:
      parser.error("--baseline reads a folder of JPEGs: --data folder:PATH")
    pipelines["baseline (tf.data, decode the crop only, antialiased resize)"] = baseline_batches(
      root, args.image_size, args.batch
    )
    pipelines["baseline, plain bicubic resize"] = baseline_batches(
      root, args.image_size, args.batch, antialias=False
    )
  rates = time_pipelines(pipelines, args.batches, args.warmup, args.batch)
  for name, rate in rates.items():
    print(f"{name}: {rate:.0f} img/s ({rate / cores:.0f} per thread)")
  print(f"img/s: {rates[f'pipeline ({args.augment})']:.1f}")


if __name__ == "__main__":
  main()
