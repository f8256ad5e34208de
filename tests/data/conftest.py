"""Fixtures of the input-pipeline tests."""

import socket

import pytest
import tensorflow_datasets as tfds

from tests.data import helpers


@pytest.fixture
def no_network(monkeypatch):
  """Any attempt to open a network connection fails the test."""

  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def image_folder(tmp_path):
  return helpers.make_image_folder(tmp_path / "ds")


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  builder = tfds.builder("fcmae_tiny_tfds", data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return data_dir
