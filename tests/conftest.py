"""Test-wide setup, before jax is imported: 8 fake CPU devices, the CPU platform even where a
TPU runtime is installed, one persistent compilation cache for the session (its subprocesses
included), the repo on sys.path and the storage layer set up (core/storage.py setup, before any
path is touched, as the entry points do); and `gcs`, a local GCS emulator for the gs:// tests."""

import os
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core import storage  # noqa: E402

storage.setup()


import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402


class Bucket:
  """The emulator's bucket: `url(name)` is a fresh gs:// prefix for one test's workdir."""

  name = "bucket"

  def __init__(self, host: str):
    self.host = host

  def url(self, name: str) -> str:
    return f"gs://{self.name}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def gcs():
  """A GCS emulator on 127.0.0.1 (tests/gcs_emulator.py, one per test process), with
  STORAGE_EMULATOR_HOST pointing this process and its subprocesses at it."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.Popen(
    [sys.executable, "-m", "tests.gcs_emulator", str(port), Bucket.name],
    cwd=root,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  host = f"http://127.0.0.1:{port}"
  deadline = time.time() + 30
  while True:
    try:
      urllib.request.urlopen(host + "/", timeout=1).close()
      break
    except OSError:
      if time.time() > deadline or proc.poll() is not None:
        proc.kill()
        raise RuntimeError("the GCS emulator did not start") from None
      time.sleep(0.1)
  os.environ["STORAGE_EMULATOR_HOST"] = host
  storage.setup()  # again: tensorstore pointed at the emulator
  yield Bucket(host)
  proc.terminate()
  proc.wait(timeout=30)


# The end-to-end runs and the benchmarks take minutes each. pytest-xdist hands tests out in
# collection order, where these come last, so they would run after the short tests, one worker
# idle: started first, they run beside them.
_LONG = (
  "tests/test_gcs.py",
  "tests/test_train.py",
  "tests/test_finetune.py",
  "tests/benchmarks/",
  "tests/trainer/test_compile_only.py",
  "tests/trainer/test_loop.py",
)


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: not item.nodeid.startswith(_LONG))
