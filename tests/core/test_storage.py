"""core/storage.py: the same files, locally and in a bucket (the GCS emulator)."""

import os
import subprocess
import sys

import pytest

from core import storage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(params=["local", "gs"])
def where(request, tmp_path):
  if request.param == "local":
    return str(tmp_path)
  return request.getfixturevalue("gcs").url("storage")


def test_importing_the_module_changes_no_environment_variable():
  code = (
    "import os; before = dict(os.environ); import core.storage; "
    "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())"
  )
  env = {
    k: v for k, v in os.environ.items() if k not in ("EPATH_USE_TF", "TENSORSTORE_GCS_HTTP_URL")
  }
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


def test_a_bucket_path_before_setup_is_refused(monkeypatch):
  monkeypatch.setattr(storage, "_set_up", False)
  with pytest.raises(RuntimeError, match="setup"):
    storage.path("gs://bucket/x")
  assert str(storage.path("relative/x")) == "relative/x"  # local paths need no setup


def test_files_are_written_whole_listed_and_read_back(where):
  storage.write_text(f"{where}/a/b.txt", "one")
  storage.write_bytes(f"{where}/a/c/d.bin", b"\x00\x01")
  storage.write_text(f"{where}/a/b.txt", "two")  # replaced whole
  assert storage.read_text(f"{where}/a/b.txt") == "two"
  assert storage.files(f"{where}/a") == ["b.txt", "c/d.bin"]
  assert sorted(storage.listdir(f"{where}/a")) == ["b.txt", "c"]
  assert storage.isdir(f"{where}/a/c") and storage.isfile(f"{where}/a/c/d.bin")
  storage.rename(f"{where}/a/c", f"{where}/e")
  assert storage.read_bytes(f"{where}/e/d.bin") == b"\x00\x01"
  assert not storage.exists(f"{where}/a/c/d.bin")
  with storage.downloaded(f"{where}/e") as local:
    assert open(os.path.join(local, "d.bin"), "rb").read() == b"\x00\x01"
  storage.rmtree(where)
  assert not storage.exists(f"{where}/a/b.txt")


def test_a_log_holds_every_write_when_it_returns_and_goes_on_after_a_reopen(where):
  p = f"{where}/run/metrics.jsonl"
  log = storage.Log(p)
  expected = ""
  for i in range(4):
    log.write(f'{{"step": {i}}}\n')
    expected += f'{{"step": {i}}}\n'
    assert storage.read_text(p) == expected  # stored before write returned
  log.close()
  log = storage.Log(p)  # a resumed run appends to what the bucket holds
  assert log.size == len(expected)
  log.write("last\n")
  log.close()
  storage.append_text(p, "appended\n")
  assert storage.read_text(p) == expected + "last\nappended\n"
  assert storage.listdir(f"{where}/run") == ["metrics.jsonl"]  # no piece left beside it


def test_a_binary_log_keeps_bytes_as_they_were(where):
  p = f"{where}/events"
  data = [bytes(range(256)), b"", b"\xff" * 1000]
  log = storage.Log(p, binary=True)
  for d in data:
    log.write(d)
  log.close()
  assert storage.read_bytes(p) == b"".join(data)


def test_a_local_directory_for_a_library_is_copied_up(where):
  with storage.local_directory(f"{where}/profile") as local:
    os.makedirs(os.path.join(local, "x"), exist_ok=True)
    with open(os.path.join(local, "x", "trace.pb"), "wb") as f:
      f.write(b"trace")
  assert storage.read_bytes(f"{where}/profile/x/trace.pb") == b"trace"


def test_a_missing_bucket_or_none_is_one_storage_error(gcs):
  with pytest.raises(storage.StorageError, match="does not exist"):
    storage.check_location("gs://no-such-bucket/run", "--workdir")
  with pytest.raises(storage.StorageError, match="names no bucket"):
    storage.check_location("gs:///run", "--workdir")
  with pytest.raises(storage.StorageError, match="only gs://"):
    storage.check_location("s3://bucket/run", "--workdir")
  storage.check_location(gcs.url("fine"), "--workdir")


def test_the_retry_settings_reach_the_tensorstore_context_orbax_builds():
  """storage.set_retries adds gcs_request_retries to what orbax's contexts are built from (no
  caller's context is taken: a newer orbax that builds them elsewhere fails here); restored."""
  from orbax.checkpoint.serialization.tensorstore_utils import get_ts_context

  storage.set_retries(5, 0.25, 4.0)
  try:
    for ocdbt in (True, False):
      spec = get_ts_context(use_ocdbt=ocdbt).spec.to_json()["gcs_request_retries"]
      assert spec == {"max_retries": 5, "initial_delay": "250ms", "max_delay": "4s"}, spec
  finally:
    storage.set_retries(32, 1.0, 32.0)
