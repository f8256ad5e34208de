"""Test-wide setup, before jax is imported: 8 fake CPU devices, the CPU platform even where a
TPU runtime is installed, one persistent compilation cache (below), the repo on sys.path and the
storage layer set up (core/storage.py setup, before any path is touched, as the entry points do);
`gcs`, a local GCS emulator for the gs:// tests; each test counting storage retries from its
start; and the order and grouping of the tests over the xdist workers."""

import hashlib
import importlib.metadata
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compilation_cache_dir() -> str:
  """One persistent compilation cache per version of the project's sources: both xdist workers,
  the runs they start (train.py inherits JAX_COMPILATION_CACHE_DIR) and every later run of the
  same sources share it. Compiling dominates the end-to-end tests on CPU, and many of their
  programs are the same ones (the reference run's step, the demo's evaluation and init). JAX keys
  each entry by the program itself, its compile options, the devices and the jaxlib version, so
  an entry is only ever reused for the identical program and the cache cannot make a failing test
  pass; the directory's key (the sources outside tests/, the library versions) only lets the
  caches of old sources be pruned: those unused for a day, and all but the newest 8."""
  digest = hashlib.sha256()
  for package in ("jax", "jaxlib", "flax", "orbax-checkpoint"):
    digest.update(f"{package}={importlib.metadata.version(package)};".encode())
  for root, dirs, names in os.walk(REPO):
    dirs[:] = sorted(
      d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "tests", "runs")
    )
    for name in sorted(n for n in names if n.endswith(".py")):
      path = os.path.join(root, name)
      digest.update(os.path.relpath(path, REPO).encode())
      with open(path, "rb") as f:
        digest.update(f.read())
  home = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "convnextv2-tests"
  )
  cache = os.path.join(home, "jax-" + digest.hexdigest()[:16])
  os.makedirs(cache, exist_ok=True)
  with open(os.path.join(cache, ".last_used"), "w"):  # JAX's entries have no leading dot
    pass

  def last_used(name):
    stamp = os.path.join(home, name, ".last_used")
    return os.path.getmtime(stamp) if os.path.exists(stamp) else 0.0

  others = sorted((n for n in os.listdir(home) if n != os.path.basename(cache)), key=last_used)
  for rank, name in enumerate(reversed(others), start=2):
    if rank > 8 or last_used(name) < time.time() - 86400:
      shutil.rmtree(os.path.join(home, name), ignore_errors=True)
  return cache


os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The xdist workers inherit these from the controller, which loads this file first.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _compilation_cache_dir()
# Every program is kept, however quick to compile: the suite compiles thousands of small ones.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
sys.path.insert(0, REPO)

from core import storage  # noqa: E402

storage.setup()


import socket  # noqa: E402
import subprocess  # noqa: E402
import urllib.request  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _storage_retries_counted_from_the_test_start():
  """The storage layer counts retried requests per process, for the next progress line: a test
  starts from none, whatever an earlier test in the same worker left uncounted (the bucket fault
  tests retry on purpose)."""
  storage.retries_since_last()


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
  proc = subprocess.Popen(
    [sys.executable, "-m", "tests.gcs_emulator", str(port), Bucket.name],
    cwd=REPO,
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


# The end-to-end runs and the benchmarks take a minute or more each. pytest-xdist hands the tests
# out in collection order, where these come last, so they would run after the short tests with
# one worker idle: started first, longest first, they run beside the short ones. Measured
# figures: docs/benchmarks.md.
_LONG = (
  "tests/test_gcs.py",
  "tests/trainer/test_compile_only.py",
  "tests/test_train.py::test_preemption",
  "tests/test_train.py",
  "tests/test_finetune.py",
  "tests/benchmarks/",
  "tests/trainer/test_loop.py",
  "tests/fcmae/test_probe.py",
  "tests/test_bad_inputs.py",
  "tests/data/test_own_data_gcs.py",
  "tests/data/test_own_data.py",
  "tests/test_gcs_faults.py",
  "tests/fcmae/test_model.py",
)


def _rank(item) -> int:
  return next((i for i, prefix in enumerate(_LONG) if item.nodeid.startswith(prefix)), len(_LONG))


def _groups(item) -> list[str]:
  return sorted(
    {
      str(m.args[0] if m.args else m.kwargs.get("name", "default"))
      for m in item.iter_markers("xdist_group")
    }
  )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
  items.sort(key=_rank)
  # Tests marked xdist_group("name") share a session fixture that is costly to build (a bucket
  # run, a trained workdir): `--dist loadgroup` sends them to one worker, which reads the group
  # from a "@name" suffix that pytest-xdist (3.8) adds to the node id in this hook on the worker,
  # by setting `item._nodeid`. pytest 9 keeps the id in `item._id`, so that suffix never
  # appears and the group's tests are spread over both workers, each building the fixture. The
  # suffix is added here where xdist's did not take.
  if not getattr(config.option, "loadgroup", False):
    return
  for item in items:
    names = _groups(item)
    if names and "@" not in item.nodeid:
      from _pytest.nodeid import NodeId  # pytest 9's id: no suffix, so no xdist 3.8 group

      item._id = NodeId(path=item._id.path, names=(f"{item._id.rest}@{'_'.join(names)}",))


def pytest_terminal_summary(terminalreporter, config):
  """Where the compiled programs are, and how many: a second run of the same sources reads them."""
  if hasattr(config, "workerinput"):
    return
  cache = os.environ["JAX_COMPILATION_CACHE_DIR"]
  entries = [n for n in os.listdir(cache) if not n.startswith(".")] if os.path.isdir(cache) else []
  terminalreporter.write_line(f"compilation cache: {cache} ({len(entries)} programs)")
