"""Does the input keep up? Images per second of the training and evaluation pipelines, each
timed alone in its own process, against the reference's PIL pipeline and plain tf.data ones.

    python -m benchmarks.input_pipeline --make-photos /tmp/photos        # an ImageNet-like folder
    python -m benchmarks.input_pipeline --data folder:/tmp/photos --augment pretrain --compare
    python -m benchmarks.input_pipeline --data folder:/data/imagenet --augment finetune --batches 100
    python -m benchmarks.input_pipeline --data folder:/tmp/photos --per-op    # where the time goes
    python -m benchmarks.input_pipeline --data folder:/tmp/photos --pil-diff  # pixels against PIL

Without `--compare`, the one pipeline `--contender` (default `ours`) runs in this process: the
pipeline exactly as in training (this process's batches, FCMAE_DATA_THREADS threads, default all
cores), `--warmup` untimed batches, then `--batches` timed ones; the last line is `img/s: X`.
`--compare` runs every contender of the recipe in its own subprocess, pinned to 1 core and to
all cores (sched_setaffinity, with threads / workers = cores), alternating contenders, for
`--rounds` rounds, and prints the median img/s of each, per core, and the 1 -> N core scaling:

* ours: ``data.pipeline.train_iterator`` (``eval_pipeline.eval_iterator`` for eval);
* pil: the reference's pipeline, PIL + torchvision-style transforms in a torch DataLoader with one
  worker process per core (``benchmarks/pil_reference.py``);
* tf-aa / tf-plain (pretrain): a plain tf.data pipeline that decodes only the crop window
  (extract_jpeg_shape + sample_distorted_bounding_box + decode_and_crop_jpeg, as big_vision and
  the Flax ImageNet example do), resizes with ``tf.image.resize(bicubic)`` antialiased (tf-aa)
  or not (tf-plain: cheaper, aliases when it shrinks) and flips; uint8 out.

`--make-photos DIR` writes an ImageNet-like folder from the photographs scikit-image ships
(astronaut, coffee, chelsea, rocket, ...): random crops resized to about 500x375, JPEG quality
90, 10 classes.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import statistics
import subprocess
import sys
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


def jpeg_files(root: str) -> list[str]:
  files = []
  for dirpath, _, names in os.walk(os.path.join(root, "train")):
    files += [os.path.join(dirpath, n) for n in names if n.lower().endswith((".jpg", ".jpeg"))]
  return sorted(files)


def baseline_batches(root: str, image_size: int, batch: int, scale=(0.2, 1.0), antialias=True):
  """The plain tf.data pipeline: decode only the crop window, resize, flip; uint8 out.
  antialias False: tf.image.resize's plain bicubic (cheaper, aliases when it shrinks)."""
  import tensorflow as tf

  from data import augment, sources

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
    return tf.image.random_flip_left_right(augment.to_uint8(image))

  files = jpeg_files(root)
  ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files)).repeat()
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(2)
  return ds.with_options(sources.tf_options()).as_numpy_iterator()


CONTENDERS = {
  "pretrain": ("ours", "pil", "tf-aa", "tf-plain"),
  "finetune": ("ours", "pil"),
  "eval": ("ours", "pil"),
}


def contender_batches(args, cores: int):
  """The endless batch iterator of `args.contender`, using `cores` threads / workers."""
  root = args.data[len("folder:") :] if args.data.startswith("folder:") else None
  if args.contender == "pil":
    from benchmarks import pil_reference

    return pil_reference.batches(root, args.augment, args.image_size, args.batch, cores)
  if args.contender in ("tf-aa", "tf-plain"):
    return baseline_batches(root, args.image_size, args.batch, antialias=args.contender == "tf-aa")
  from data import eval_pipeline, pipeline

  if args.augment == "eval":

    def eval_forever():
      while True:
        yield from eval_pipeline.eval_iterator(
          args.data,
          data_dir=args.data_dir,
          image_size=args.image_size,
          local_batch_size=args.batch,
          split="train",
        )

    return eval_forever()
  options = {"randaugment": "rand-m9-mstd0.5-inc1"} if args.augment == "finetune" else {}
  return pipeline.train_iterator(
    args.data,
    data_dir=args.data_dir,
    image_size=args.image_size,
    local_batch_size=args.batch,
    seed=0,
    augment=args.augment,
    augment_options=options,
  )


def run_one(args) -> float:
  """Times `args.contender` in this process: img/s over `args.batches` after the warmup."""
  cores = len(os.sched_getaffinity(0))
  batches = contender_batches(args, cores)
  for _ in range(max(args.warmup, 1)):
    first = next(batches)
  first = first["image"] if isinstance(first, dict) else first
  start = time.perf_counter()
  for _ in range(args.batches):
    next(batches)
  rate = args.batches * args.batch / (time.perf_counter() - start)
  print(
    f"{args.contender}, {args.data}, {args.augment}, batch {args.batch} at {args.image_size}: "
    f"image {first.dtype} {first.shape}; {cores} cores"
  )
  print(f"img/s: {rate:.1f}")
  return rate


def compare(args, argv) -> None:
  """Every contender of the recipe alone in a subprocess, on 1 core and on all, alternating."""
  all_cores = sorted(os.sched_getaffinity(0))
  settings = [all_cores[:1], all_cores] if len(all_cores) > 1 else [all_cores]
  contenders = CONTENDERS[args.augment]
  rates = {(c, len(cpus)): [] for c in contenders for cpus in settings}
  passed = [a for a in argv if a != "--compare"]
  for r in range(args.rounds):
    for cpus in settings:
      for contender in contenders:
        env = dict(os.environ, FCMAE_DATA_THREADS=str(len(cpus)))
        cmd = [sys.executable, "-m", "benchmarks.input_pipeline", *passed]
        cmd += ["--contender", contender]
        pin = lambda cpus=cpus: os.sched_setaffinity(0, cpus)
        out = subprocess.run(cmd, env=env, preexec_fn=pin, capture_output=True, text=True)
        lines = [x for x in out.stdout.splitlines() if x.startswith("img/s: ")]
        if out.returncode or not lines:
          raise RuntimeError(f"{contender} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
        rates[contender, len(cpus)].append(float(lines[-1].split()[1]))
        print(
          f"round {r + 1}, {len(cpus)} cores, {contender}: {rates[contender, len(cpus)][-1]:.0f}"
        )
  n = len(settings[-1])
  print(
    f"\n{args.augment}, batch {args.batch} at {args.image_size}, {args.batches} batches after "
    f"{args.warmup}, medians of {args.rounds} alternating rounds, each pipeline alone"
  )
  print(f"| pipeline | img/s, 1 core | img/s, {n} cores | per core at {n} | {n} cores / 1 |")
  print("|---|---|---|---|---|")
  median = {k: statistics.median(v) for k, v in rates.items()}
  for c in contenders:
    one, all_ = median[c, 1], median[c, n]
    print(f"| {c} | {one:.0f} | {all_:.0f} | {all_ / n:.0f} | {all_ / one:.2f}x |")
  for c in contenders[1:]:
    print(f"ours / {c} at {n} cores: {median['ours', n] / median[c, n]:.2f}x")


def per_op(args) -> None:
  """Milliseconds per image of each step, one thread, on the folder's JPEGs."""
  import tensorflow as tf
  from PIL import Image

  from data import augment, resample

  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
  root = args.data[len("folder:") :]
  files = jpeg_files(root)[:: max(1, len(jpeg_files(root)) // 200)]
  raw = [open(f, "rb").read() for f in files]
  data = [tf.constant(r) for r in raw]
  size = args.image_size
  windows = [
    augment.crop_window(tf.io.extract_jpeg_shape(d), tf.constant([0, i], tf.int64), (0.2, 1.0))
    for i, d in enumerate(data)
  ]
  crops = [tf.io.decode_and_crop_jpeg(d, w, channels=3) for d, w in zip(data, windows)]
  np_crops = [c.numpy() for c in crops]
  spec = tf.TensorSpec([None, None, 3], tf.uint8)
  decode_crop = tf.function(lambda d, w: tf.io.decode_and_crop_jpeg(d, w, channels=3))
  decode = tf.function(lambda d: tf.io.decode_jpeg(d, channels=3))

  def tf_resize(antialias):
    fn = lambda x: tf.image.resize(
      tf.cast(x, tf.float32), [size, size], "bicubic", antialias=antialias
    )
    return tf.function(lambda x: augment.to_uint8(fn(x)), input_signature=[spec])

  aa, plain = tf_resize(True), tf_resize(False)
  ours = tf.function(lambda x: augment.resize(x, size), input_signature=[spec])
  steps = {
    "tf decode_and_crop_jpeg (the crop window)": lambda i: decode_crop(data[i], windows[i]),
    "tf decode_jpeg (whole)": lambda i: decode(data[i]),
    "PIL decode (whole)": lambda i: Image.open(io.BytesIO(raw[i])).convert("RGB"),
    "tf.image.resize bicubic, antialias (before)": lambda i: aa(crops[i]),
    "tf.image.resize bicubic, plain (aliases)": lambda i: plain(crops[i]),
    "PIL resize bicubic": lambda i: Image.fromarray(np_crops[i]).resize((size, size), 3),
    "data.resample.resize_bicubic (numpy)": lambda i: resample.resize_bicubic(
      np_crops[i], size, size
    ),
    "augment.resize (after; tf.numpy_function)": lambda i: ours(crops[i]),
  }
  print(f"{len(files)} JPEGs of {root}, crops of RandomResizedCrop(0.2-1), ms per image, 1 thread")
  for name, fn in steps.items():
    for i in range(10):
      fn(i)
    times = []
    for _ in range(3):
      start = time.perf_counter()
      for i in range(len(files)):
        fn(i)
      times.append((time.perf_counter() - start) / len(files) * 1e3)
    print(f"{name}: {statistics.median(times):.3f}")
  share = np.mean([min(w.numpy()[2], w.numpy()[3]) >= 2 * size for w in windows])
  print(f"crops a 1/2 DCT-scaled decode could serve (both sides >= {2 * size}): {share:.1%}")
  rand_augment_ops(np_crops, size)


def rand_augment_ops(crops, size: int) -> None:
  """Milliseconds per image of each RandAugment op (m9, increasing) on the crops resized to
  `size`, and of RandAugment as the finetuning recipe applies it (2 ops, each with p=0.5)."""
  import tensorflow as tf

  from data import randaugment, resample

  images = [tf.constant(resample.resize_bicubic(c, size, size)) for c in crops]
  config = randaugment.parse_rand_augment("rand-m9-mstd0.5-inc1")
  spec = tf.TensorSpec([size, size, 3], tf.uint8)
  seed = tf.TensorSpec([2], tf.int64)
  fns = {"(a tf.function call that does nothing)": tf.function(lambda x: x, input_signature=[spec])}
  for name in randaugment.RAND_AUGMENT_OPS:
    fns[name] = tf.function(
      lambda x, name=name: randaugment.apply_rand_augment_op(name, x, 9.0, 1.0, config),
      input_signature=[spec],
    )
  whole = tf.function(lambda x, s: randaugment.rand_augment(x, s, config), [spec, seed])
  draws = itertools.count()  # a new seed each call: the ops drawn vary as in training
  fns["RandAugment (2 ops, p=0.5 each)"] = lambda x: whole(
    x, tf.constant([0, next(draws)], tf.int64)
  )
  print(f"RandAugment ops on {len(images)} images at {size}, ms per image, 1 thread")
  for name, fn in fns.items():
    for image in images[:5]:
      fn(image)
    times = []
    for _ in range(3):
      start = time.perf_counter()
      for image in images:
        fn(image)
      times.append((time.perf_counter() - start) / len(images) * 1e3)
    print(f"{name}: {statistics.median(times):.3f}")


def pil_diff(args) -> None:
  """Max and mean |ours - PIL| (uint8 levels) of RandomResizedCrop resizes of the photographs."""
  import tensorflow as tf
  from PIL import Image

  from data import augment

  root = args.data[len("folder:") :]
  files = jpeg_files(root)[:: max(1, len(jpeg_files(root)) // 200)]
  size = args.image_size
  spec = tf.TensorSpec([None, None, 3], tf.uint8)
  before = tf.function(
    lambda x: augment.to_uint8(
      tf.image.resize(tf.cast(x, tf.float32), [size, size], "bicubic", antialias=True)
    ),
    input_signature=[spec],
  )
  after = tf.function(lambda x: augment.resize(x, size), input_signature=[spec])
  diffs = {"before (tf.image.resize, antialias)": [], "after (data/resample.py)": []}
  two_pass = []
  for i, f in enumerate(files):
    crop_seed = tf.constant([0, i], tf.int64)
    data = tf.io.read_file(f)
    window = augment.crop_window(tf.io.extract_jpeg_shape(data), crop_seed, (0.2, 1.0))
    crop = tf.io.decode_and_crop_jpeg(data, window, channels=3)
    pil = np.asarray(Image.fromarray(crop.numpy()).resize((size, size), 3), np.int16)
    h = Image.fromarray(crop.numpy()).resize((size, crop.shape[0]), 3)
    two_pass.append(np.asarray(h.resize((size, size), 3), np.int16))
    for name, fn in zip(diffs, (before, after)):
      diffs[name].append((np.asarray(fn(crop), np.int16), pil, two_pass[-1]))
  print(f"{len(files)} RandomResizedCrop(0.2-1) crops of {root} resized to {size}, |x - PIL|:")
  for name, rows in diffs.items():
    d = np.abs(np.stack([r[0] - r[1] for r in rows]))
    t = np.abs(np.stack([r[0] - r[2] for r in rows]))
    print(
      f"{name}: vs Image.resize max {d.max()}, mean {d.mean():.4f}; vs PIL's horizontal then "
      f"vertical pass max {t.max()}, mean {t.mean():.4f}"
    )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default="demo")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--augment", choices=("pretrain", "finetune", "eval"), default="pretrain")
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--batches", type=int, default=100, help="timed batches")
  parser.add_argument("--warmup", type=int, default=20, help="untimed batches first")
  parser.add_argument("--contender", choices=("ours", "pil", "tf-aa", "tf-plain"), default="ours")
  parser.add_argument("--compare", action="store_true", help="time every contender alone")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--per-op", action="store_true", help="ms per image of each step")
  parser.add_argument("--pil-diff", action="store_true", help="resized pixels against PIL's")
  parser.add_argument("--make-photos", metavar="DIR", help="write an ImageNet-like folder and exit")
  args = parser.parse_args(argv)
  if args.make_photos:
    make_photos(args.make_photos)
  elif args.per_op:
    per_op(args)
  elif args.pil_diff:
    pil_diff(args)
  elif args.compare:
    compare(args, sys.argv[1:] if argv is None else argv)
  else:
    if args.contender != "ours" and not args.data.startswith("folder:"):
      parser.error(f"--contender {args.contender} reads a folder of JPEGs: --data folder:PATH")
    run_one(args)
    # An unexhausted eval iterator's tf.data threads can be inside tf.numpy_function when the
    # interpreter finalises, which hung the process at exit: leave without finalising.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
  main()
