"""data/sources.py: split sizes and classes of each source, and clear errors for folders and
TFDS datasets that are missing or not prepared (nothing is ever downloaded)."""

import os

import pytest

from data import demo, eval_pipeline, pipeline, sources
from data.info import DatasetError, DatasetInfo
from tests.data.helpers import S, write_image


def test_dataset_info_demo():
  info = sources.dataset_info("demo")
  assert info == DatasetInfo(
    num_classes=len(demo.CLASSES), num_train_examples=1200, num_eval_examples=240
  )


def test_folder_errors(tmp_path):
  with pytest.raises(DatasetError, match="missing"):
    sources.dataset_info(f"folder:{tmp_path / 'missing'}")
  (tmp_path / "no_train" / "val" / "cat").mkdir(parents=True)  # no train/: unlabeled, empty
  with pytest.raises(DatasetError, match="holds no image files"):
    sources.dataset_info(f"folder:{tmp_path / 'no_train'}")

  root = tmp_path / "extra_val_class"
  write_image(str(root / "train" / "cat" / "a.png"), (1, 2, 3), (8, 8))
  write_image(str(root / "val" / "bird" / "b.png"), (1, 2, 3), (8, 8))
  with pytest.raises(DatasetError, match="'bird'"):
    sources.dataset_info(f"folder:{root}")

  root = tmp_path / "empty_val"
  write_image(str(root / "train" / "cat" / "a.png"), (1, 2, 3), (8, 8))
  (root / "val" / "cat").mkdir(parents=True)
  with pytest.raises(DatasetError, match="no images"):
    sources.dataset_info(f"folder:{root}")
  root = tmp_path / "no_val"
  write_image(str(root / "train" / "cat" / "a.png"), (1, 2, 3), (8, 8))
  with pytest.raises(DatasetError, match="val"):
    sources.dataset_info(f"folder:{root}")


def test_unprepared_tfds_dataset_gives_clear_error(tmp_path, no_network):
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(sources.DatasetNotPreparedError) as err:
    sources.dataset_info("imagenet2012", data_dir=data_dir)
  msg = str(err.value)
  assert "imagenet2012" in msg and data_dir in msg
  assert os.path.join(data_dir, "downloads", "manual") in msg
  assert "by hand" in msg and f"tfds build imagenet2012 --data_dir {data_dir}" in msg
  assert isinstance(err.value, FileNotFoundError)
  with pytest.raises(sources.DatasetNotPreparedError):
    pipeline.train_iterator(
      "imagenet2012", data_dir=data_dir, image_size=S, local_batch_size=2, seed=0
    )
  with pytest.raises(sources.DatasetNotPreparedError):
    eval_pipeline.eval_iterator("imagenet2012", data_dir=data_dir, image_size=S, local_batch_size=2)
  assert not os.path.exists(os.path.join(data_dir, "downloads"))  # nothing was fetched
