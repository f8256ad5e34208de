"""Image folders, local or gs://: which layout a folder has, which files it holds, and the file
list a run keeps in its workdir.

``folder:DIR`` is *labeled* when ``DIR/train`` has subdirectories: ``DIR/train/<class>/...`` and
``DIR/val/<class>/...``, as ImageNet is laid out. Any other folder is *unlabeled*: every image
file under DIR, nested at any depth, is one training image (no classes, no split; its
"validation" images, which the reconstruction pictures show, are the same list).

Image files are named by their extension (``IMAGE_EXTENSIONS``: JPEG, PNG, BMP, GIF, WebP, and
``.npy`` arrays for channel counts other than 1 and 3); anything else (``notes.txt``,
``.DS_Store``, hidden files and folders) is ignored. Whether a file can be decoded is found out
when it is read (``data/skips.py``).

The list of an unlabeled folder is made once, by process 0, and written into the workdir
(``LIST_NAME``, one path relative to DIR a line, sorted): a resume and every other host read it
from there and never list the folder or bucket again, so the training order stays exactly the
same even when files are added to the folder later.
"""

from __future__ import annotations

import os

from core import storage
from data.info import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".npy")
LIST_NAME = "data_files.txt"  # in the workdir

# root -> the sorted relative paths of its images, as a run fixed them (use_list) or listed.
_lists: dict[str, tuple[str, ...]] = {}


def root_of(name: str) -> str:
  """The folder of a 'folder:DIR' name: absolute when local, the URL as it is for gs://."""
  root = name[len("folder:") :]
  if storage.is_remote(root):
    return root.rstrip("/")
  return os.path.abspath(os.path.expanduser(root))


def is_image(relative: str) -> bool:
  """An image file by its name: a known extension, and no hidden file or folder on its path."""
  parts = relative.replace("\\", "/").split("/")
  return not any(p.startswith(".") for p in parts) and parts[-1].lower().endswith(IMAGE_EXTENSIONS)


def join(root: str, relative: str) -> str:
  return f"{root}/{relative}" if storage.is_remote(root) else os.path.join(root, relative)


def scan(root: str) -> list[str]:
  """The image files under `root` at any depth, relative to it, sorted (the folder is listed:
  os.walk locally, one recursive object listing on GCS)."""
  if not storage.is_remote(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
      dirnames[:] = [d for d in dirnames if not d.startswith(".")]
      rel = os.path.relpath(dirpath, root)
      out += [f if rel == "." else f"{rel}/{f}" for f in filenames]
    return sorted(f for f in out if is_image(f))
  return sorted(f for f in storage.find(root) if is_image(f))


def _check_exists(root: str) -> None:
  if not storage.isdir(root):
    raise DatasetError(f"dataset folder {root!r} does not exist (data.name=folder:{root})")


def is_labeled(root: str) -> bool:
  """DIR/train has subdirectories (the class folders): the labeled layout."""
  _check_exists(root)
  train = join(root, "train")
  return storage.isdir(train) and bool(class_dirs(train))


def class_dirs(split_dir: str) -> list[str]:
  return sorted(
    n
    for n in storage.listdir(split_dir)
    if not n.startswith(".") and storage.isdir(join(split_dir, n))
  )


def use_list(root: str, files) -> None:
  """Fixes the images of `root` for this process (the list read from the workdir)."""
  _lists[root] = tuple(files)


def image_files(root: str) -> tuple[str, ...]:
  """The images of the unlabeled folder `root`: the list fixed by use_list, else listed now."""
  if root not in _lists:
    _check_exists(root)
    files = scan(root)
    if not files:
      raise DatasetError(
        f"dataset folder {root!r} holds no image files (extensions "
        f"{', '.join(IMAGE_EXTENSIONS)}, at any depth)"
      )
    _lists[root] = tuple(files)
  return _lists[root]


def list_path(workdir: str) -> str:
  return join(workdir, LIST_NAME)


def read_list(workdir: str) -> list[str] | None:
  """The file list a run wrote into `workdir`, or None when it has none."""
  p = list_path(workdir)
  if not storage.exists(p):
    return None
  return [line for line in storage.read_text(p).splitlines() if line]


def write_list(workdir: str, files) -> str:
  p = list_path(workdir)
  storage.write_text(p, "".join(f"{f}\n" for f in files))
  return p


def labeled_split(root: str, split_dir_name: str) -> tuple[list[str], list[int], list[str]]:
  """(paths, labels, classes) of ROOT/<split>/<class>/** (sorted), the labeled layout."""
  train_dir = join(root, "train")
  classes = class_dirs(train_dir)
  index = {c: i for i, c in enumerate(classes)}
  split_dir = join(root, split_dir_name)
  if not storage.isdir(split_dir):
    raise DatasetError(f"split directory {split_dir!r} does not exist")
  paths, labels = [], []
  for cls in class_dirs(split_dir):
    if cls not in index:
      raise DatasetError(f"class {cls!r} in {split_dir!r} is not a class of {train_dir!r}")
    files = [join(join(split_dir, cls), f) for f in scan(join(split_dir, cls))]
    paths += files
    labels += [index[cls]] * len(files)
  if not paths:
    raise DatasetError(
      f"split directory {split_dir!r} contains no images (extensions {', '.join(IMAGE_EXTENSIONS)})"
    )
  return paths, labels, classes
