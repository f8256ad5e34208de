"""How long listing an unlabeled image folder takes (data/folders.py's scan, what a run does once,
on process 0, before it writes the workdir's file list): N files, nested 100 to a folder, on the
local disk and in a bucket of the local GCS emulator (gcp-storage-emulator, as the tests use).

    python -m benchmarks.folder_listing --files 100000

The emulator's bucket is filled in its own memory (uploading 100,000 objects one request at a
time would take the emulator far longer than the listing measured); the listing itself goes over
HTTP through the storage layer (etils epath, gcsfs), as a run's does.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time


def _names(n: int) -> list[str]:
  return [f"d{i // 10_000:02d}/e{i // 100 % 100:02d}/img_{i:07d}.jpg" for i in range(n)]


def local(n: int) -> float:
  from data import folders

  with tempfile.TemporaryDirectory() as root:
    for name in _names(n):
      path = os.path.join(root, name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      open(path, "wb").close()
    start = time.perf_counter()
    found = folders.scan(root)
    seconds = time.perf_counter() - start
  assert len(found) == n, len(found)
  return seconds


def emulator(n: int) -> float:
  from gcp_storage_emulator.handlers.objects import _make_object_resource
  from gcp_storage_emulator.server import create_server

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket="bench")
  server.start()
  try:
    host = f"http://127.0.0.1:{port}"
    storage = server._storage
    objects = storage.objects.setdefault("bench", {})
    for name in _names(n):
      full = f"photos/{name}"
      objects[full] = _make_object_resource(host, "bench", full, "image/jpeg", 0)
      storage._store.write_bytes(storage._object_path("bench", full), b"")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    from core import storage as our_storage
    from data import folders

    our_storage.setup()
    start = time.perf_counter()
    found = folders.scan("gs://bench/photos")
    seconds = time.perf_counter() - start
  finally:
    server.stop()
  assert len(found) == n, len(found)
  return seconds


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--files", type=int, default=100_000)
  args = parser.parse_args(argv)
  result = {
    "files": args.files,
    "local_s": round(local(args.files), 2),
    "emulator_s": round(emulator(args.files), 2),
  }
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
