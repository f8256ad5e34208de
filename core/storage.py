"""Where a run's files live: a local path or `gs://BUCKET/PATH`, read and written through etils
epath (what orbax itself uses), so every path the project takes may be either. Local paths
behave as they always did.

gs:// goes through epath's fsspec backend (gcsfs), which honours STORAGE_EMULATOR_HOST, not
through TensorFlow's GCS filesystem, which cannot be pointed at an emulator: the project sets
EPATH_USE_TF=false. With STORAGE_EMULATOR_HOST set, tensorstore (orbax's array files) is pointed
at the same place (TENSORSTORE_GCS_HTTP_URL). On Cloud TPU VMs the VM's service account is the
credential; nothing else is needed.

Nothing happens on import: the entry points call `setup()` once at start, before a gs:// path
is touched (it sets the environment variables above).

GCS objects cannot be appended to: `Log` uploads what a write adds as a small object and composes
it onto the end of the log object (GCS's compose, done in the bucket), so a log row is in the
bucket before it is reported and a write costs what it adds, not what the log already holds.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import uuid

from core import errors
from core.errors import UserError

EMULATOR = "STORAGE_EMULATOR_HOST"


class StorageError(UserError, OSError):
  """A gs:// path that names no bucket, a bucket that does not exist or cannot be reached."""


_set_up = False


def setup() -> None:
  """Points every library that reads or writes gs:// at the same place: real GCS, or the
  emulator that STORAGE_EMULATOR_HOST names (epath through gcsfs, tensorstore). Called by the
  entry points at start, and by the tests' emulator fixture, before a gs:// path is touched;
  values the user set are kept."""
  global _set_up
  if not _set_up:
    gcsfs_log = logging.getLogger("gcsfs")
    gcsfs_log.addHandler(_retries)
    gcsfs_log.setLevel(logging.DEBUG)  # where it says what it retries
    gcsfs_log.propagate = False  # _retries passes on its warnings
  _set_up = True
  os.environ.setdefault("EPATH_USE_TF", "false")
  host = os.environ.get(EMULATOR)
  if host:
    url = host if "://" in host else f"http://{host}"
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url.rstrip("/"))
    # gcsfs asks GCS's control plane (gRPC) for the bucket's layout; an emulator has none.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


class _Retries(logging.Handler):
  """Counts the requests gcsfs retried (429, 5xx, dropped connections: gcsfs's own retries,
  which it reports at DEBUG level), by what went wrong. Passes gcsfs's warnings on; its
  tracebacks of an error it gave up on are dropped: the error reaches the caller, which says it
  in one line."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.counts = collections.Counter()

  def emit(self, record):
    message = record.getMessage()
    if "retrying after exception:" in message:
      reason = message.split("retrying after exception:", 1)[1].strip(" ,") or "?"
      with _retries_lock:
        self.counts[reason] += 1
    elif record.levelno >= logging.WARNING and record.module != "retry":
      logging.getLogger().handle(record)


_retries = _Retries()
_retries_lock = threading.Lock()


def set_retries(retries: int, delay: float, max_delay: float) -> None:
  """How tensorstore (the checkpoints' arrays) retries a GCS request that failed with 429, 5xx
  or a dropped connection: `retries` attempts, `delay` seconds before the first retry, doubling
  up to `max_delay` (its `gcs_request_retries` context resource; its defaults: 32, 1 s, 32 s).
  Orbax (0.12) takes no tensorstore context from its caller: it builds each one from two dicts of
  its tensorstore_utils (get_ts_context), which the resource is added to here, so every save
  and restore after this call uses it; an orbax that keeps them elsewhere is said in one line,
  and tensorstore's defaults stay. gcsfs's retries are fixed in its code (docs/gcs.md)."""
  try:
    from orbax.checkpoint._src.serialization import tensorstore_utils as orbax_ts

    contexts = (orbax_ts._BASE_TS_CONTEXT, orbax_ts._DEFAULT_OCDBT_TS_CONTEXT)
  except (ImportError, AttributeError):
    logging.warning(
      "This orbax-checkpoint builds its tensorstore contexts elsewhere: the storage.* retry "
      "settings are not applied (tensorstore's own: 32 attempts, 1 s doubling to 32 s)."
    )
    return
  us = lambda seconds: f"{round(seconds * 1e6)}us"  # what tensorstore parses, whatever the float
  resource = {"max_retries": retries, "initial_delay": us(delay), "max_delay": us(max_delay)}
  for context in contexts:
    context["gcs_request_retries"] = resource


def _tensorstore_retries() -> int:
  """The GCS requests tensorstore retried in this process so far (its metrics: a counter per
  GCS driver); 0 before tensorstore is imported."""
  if "tensorstore" not in sys.modules:
    return 0
  import tensorstore

  metrics = tensorstore.experimental_collect_matching_metrics("/tensorstore/kvstore/gcs")
  return sum(
    int(v.get("value", 0)) for m in metrics if m["name"].endswith("/retries") for v in m["values"]
  )


_tensorstore_seen = 0


def retries_since_last() -> str:
  """'' when no storage request was retried since the last call, else one line: how many, on
  what (for the log): gcsfs's by what went wrong, tensorstore's (which says no reason) as one
  count."""
  global _tensorstore_seen
  with _retries_lock:
    counts = dict(_retries.counts)
    _retries.counts.clear()
    total = _tensorstore_retries()
    arrays, _tensorstore_seen = total - _tensorstore_seen, total
  if not counts and not arrays:
    return ""
  what = [f"{reason} x{n}" for reason, n in sorted(counts.items(), key=lambda c: -c[1])]
  if arrays:
    what.append(f"checkpoint arrays (tensorstore) x{arrays}")
  n = sum(counts.values()) + arrays
  return f"Storage: {n} request(s) retried since the last row ({', '.join(what)})."


def is_remote(path) -> bool:
  return "://" in str(path)


def path(p):
  """The etils epath.Path of a local path or a gs:// URL."""
  from etils import epath

  if not _set_up and is_remote(p):
    raise RuntimeError(f"{p}: core.storage.setup() must be called at start, before gs:// paths.")
  return epath.Path(p)


def absolute(p: str) -> str:
  """os.path.abspath for local paths; a URL as it is."""
  return str(p) if is_remote(p) else os.path.abspath(p)


def exists(p) -> bool:
  return path(p).exists()


def isdir(p) -> bool:
  return path(p).is_dir()


def isfile(p) -> bool:
  return path(p).is_file()


def listdir(p) -> list[str]:
  return [child.name for child in path(p).iterdir()]


def files(p) -> list[str]:
  """The paths of every file under the directory `p`, relative to it."""
  root = str(p).rstrip("/")
  out = []
  for parent, _, names in path(root).walk():
    parent = str(parent)
    if is_remote(root) and not is_remote(parent):  # fsspec walks without the scheme
      parent = root.split("://")[0] + "://" + parent
    out += [os.path.relpath(f"{parent}/{name}", root) for name in names]
  return sorted(out)


def read_text(p) -> str:
  return path(p).read_text()


def read_bytes(p) -> bytes:
  return path(p).read_bytes()


def write_bytes(p, data: bytes) -> None:
  """Writes a whole file at once: locally through a temporary file and a rename, so a reader
  never sees half of it; a GCS object is replaced whole by its upload."""
  if is_remote(p):
    target = path(p)
    with refusals(f"writing {p}"):
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(data)
    return
  os.makedirs(os.path.dirname(os.path.abspath(p)) or ".", exist_ok=True)
  tmp = f"{p}.tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, p)


def write_text(p, text: str) -> None:
  write_bytes(p, text.encode())


def append_text(p, text: str) -> None:
  """Adds `text` at the end of a file (a GCS object: composed, see `Log`)."""
  log = Log(p)
  try:
    log.write(text)
  finally:
    log.close()


def rename(source, target) -> None:
  """Moves a file or a directory (on GCS: each object copied, then deleted)."""
  path(source).rename(path(target))


def rmtree(p) -> None:
  if is_remote(p):
    with contextlib.suppress(FileNotFoundError):
      path(p).rmtree()
  else:
    shutil.rmtree(p, ignore_errors=True)


class Log:
  """A file that grows at its end: metrics rows, TensorBoard events. `write` returns once what it
  adds is stored, so a run killed later loses none of it. Locally the file is appended to. A GCS
  object cannot be: the first write uploads it, each later one uploads what it adds as a small
  object beside it (.append-ID, no name a reader of the directory takes for its own), composes
  the log object from the two in the bucket, and deletes the small one. A write's cost is what
  it adds and three requests, whatever the log holds. The compose is conditional on the log's
  generation, so a compose that gcsfs retries after its answer was lost appends nothing twice."""

  def __init__(self, p, *, binary: bool = False):
    self.path, self.binary = str(p), binary
    self._file = self._fs = None
    if is_remote(p):
      import fsspec

      self._fs = fsspec.filesystem("gs")
      self.size = self._generation = None
      if exists(p):
        info = self._stat()
        self.size, self._generation = int(info["size"]), info["generation"]
    else:
      os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
      self._file = open(p, "ab", buffering=0)  # noqa: SIM115 (closed by close())
      self.size = self._file.tell()

  def write(self, data) -> None:
    data = data if self.binary else data.encode()
    if self._file is not None:
      self._file.write(data)
      self.size = self._file.tell()
      return
    with refusals(f"writing {self.path}"):
      self._append(data)

  def _append(self, data: bytes) -> None:
    if self.size is None:  # a new object
      self._fs.pipe_file(self.path, data)
      self.size, self._generation = len(data), self._stat()["generation"]
    elif data:
      part = f"{os.path.dirname(self.path)}/.append-{uuid.uuid4().hex}"
      self._fs.pipe_file(part, data)
      try:
        self._compose(part, len(data))
      finally:
        with contextlib.suppress(FileNotFoundError):  # a retried delete that had been done
          self._fs.rm_file(part)

  def _stat(self) -> dict:
    """The log object's metadata as the bucket has it now (gcsfs's info may answer from a
    listing it cached)."""
    return self._fs.call("GET", "b/{}/o/{}", *_bucket_key(self.path), json_out=True)

  def _compose(self, part: str, added: int) -> None:
    bucket, key = _bucket_key(self.path)
    request = {
      "kind": "storage#composeRequest",
      "sourceObjects": [{"name": key}, {"name": _bucket_key(part)[1]}],
      "destination": {"name": key, "bucket": bucket},
    }
    try:
      out = self._fs.call(
        "POST",
        "b/{}/o/{}/compose",
        bucket,
        key,
        ifGenerationMatch=self._generation,
        headers={"Content-Type": "application/json"},
        json=request,
        json_out=True,
      )
    except FileExistsError as e:  # gcsfs's 412: the precondition failed
      out = self._stat()  # the generation moved: by this compose, whose answer was lost?
      if int(out["size"]) != self.size + added:
        raise OSError(f"{self.path} was changed by another writer while this run appended") from e
    self.size, self._generation = int(out["size"]), out["generation"]

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


def _bucket_key(url: str) -> tuple[str, str]:
  return tuple(url.split("://", 1)[1].split("/", 1))


@contextlib.contextmanager
def local_directory(p):
  """A local directory for a library that writes only local files (the profiler): `p` itself
  when local; else a temporary directory whose files are copied under `p` at the end."""
  if not is_remote(p):
    yield p
    return
  tmp = tempfile.mkdtemp(prefix="fcmae-upload-")
  try:
    yield tmp
    for root, _, names in os.walk(tmp):
      for name in names:
        local = os.path.join(root, name)
        with open(local, "rb") as f:
          write_bytes(f"{p}/{os.path.relpath(local, tmp)}", f.read())
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def check_location(p: str, what: str) -> None:
  """StorageError unless a gs:// `p` names a bucket that exists and can be read with this
  host's credentials (one line: what is wrong, and what to do). Local paths pass. Reads only:
  nothing is written."""
  if not is_remote(p):
    return
  scheme, rest = str(p).split("://", 1)
  if scheme != "gs":
    raise StorageError(f"{what}={p!r}: of URLs only gs://BUCKET/PATH (Cloud Storage) is read.")
  bucket = rest.split("/", 1)[0]
  if not bucket:
    raise StorageError(f"{what}={p!r} names no bucket: write gs://BUCKET/PATH.")
  where = os.environ.get(EMULATOR)
  where = f" (the emulator at {where})" if where else ""
  gcsfs_log = logging.getLogger("gcsfs")  # which logs each refused request with its traceback
  level = gcsfs_log.level
  gcsfs_log.setLevel(logging.CRITICAL)
  try:
    path(f"gs://{bucket}").stat()
  except FileNotFoundError:
    raise StorageError(
      f"{what}={p!r}: the bucket gs://{bucket} does not exist{where}. Create it "
      f"(gcloud storage buckets create gs://{bucket}) or correct the name."
    ) from None
  except Exception as e:  # noqa: BLE001 (gcsfs, google-auth and aiohttp raise many kinds)
    raise StorageError(f"{what}={p!r}: cannot read gs://{bucket}{where}: {describe(e)}") from None
  finally:
    gcsfs_log.setLevel(level)


def refused(error: BaseException) -> str | None:
  """`describe`'s line when a GCS call was refused for good (credentials, permission): no
  retry will pass it. None for any other error."""
  text = describe(error)
  return text if text.startswith(("no usable credentials", "permission denied")) else None


@contextlib.contextmanager
def refusals(what: str):
  """Within this block, a GCS call refused for good (`refused`) is a one-line StorageError
  '<what>: <why>'; any other error passes as it is."""
  try:
    yield
  except Exception as e:
    line = refused(e)
    if line is None:
      raise
    raise StorageError(f"{what}: {line}") from e


def describe(error: BaseException) -> str:
  """One line on a failed GCS call, with what to do for missing or refused credentials."""
  text = errors.one_line(error)
  code = getattr(error, "code", None)
  # Status codes as whole words: a URL's port (127.0.0.1:40121) must not read as one.
  if (
    code == 401
    or re.search(r"\b401\b", text)
    or "credentials" in text.lower()
    or "Anonymous" in text
  ):
    return (
      f"no usable credentials ({text}). On a Cloud TPU or GCE VM the VM's service account is "
      "used; elsewhere run `gcloud auth application-default login`."
    )
  if code == 403 or "Forbidden" in text or re.search(r"\b403\b", text):
    return (
      f"permission denied ({text}). Grant this host's account Storage Object Admin on the "
      "bucket (roles/storage.objectAdmin)."
    )
  return text


@contextlib.contextmanager
def downloaded(p):
  """A local path holding a copy of the file or directory `p` (itself when local), for readers
  of local files only (PyTorch, safetensors); the copy is removed afterwards."""
  if not is_remote(p):
    yield p
    return
  source = path(p)
  tmp = tempfile.mkdtemp(prefix="fcmae-download-")
  try:
    local = os.path.join(tmp, source.name)
    if source.is_dir():
      for name in files(p):
        target = os.path.join(local, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
          f.write(read_bytes(f"{p}/{name}"))
    else:
      with open(local, "wb") as f:
        f.write(source.read_bytes())
    yield local
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def find(p) -> list[str]:
  """The paths of every file under the gs:// directory `p`, relative to it, sorted: one recursive
  object listing (paginated), not a request per folder as `files` walks."""
  import fsspec

  path(p)  # set up (gs:// needs storage.setup() first)
  scheme, _, rest = str(p).rstrip("/").partition("://")
  found = fsspec.filesystem(scheme).find(rest)
  return sorted(os.path.relpath(f, rest) for f in found)
