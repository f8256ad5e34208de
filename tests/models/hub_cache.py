"""A Hugging Face hub cache written by hand in the hub's own on-disk layout, so that the real
`huggingface_hub` code reads it with HF_HUB_OFFLINE=1 and no test reaches the network:

    CACHE/models--ORG--NAME/blobs/<sha256 of the file>
    CACHE/models--ORG--NAME/snapshots/<commit>/<file>  -> ../../blobs/<sha256> (relative link)
    CACHE/models--ORG--NAME/refs/<branch or tag>       the commit hash
    CACHE/models--ORG--NAME/trees/<commit>.json        the repository's file listing (what
                                                       huggingface_hub 2.x keeps; optional)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def write_repo(
  cache: Path, repo_id: str, files: dict[str, bytes], refs=("main",), listing: dict | None = None
) -> str:
  """Writes `files` as one commit of `repo_id` (its hash derived from the contents) that each of
  `refs` points to; returns the commit hash. listing: {name: bytes} of the files the repository
  holds at that commit (a superset of `files`: the others were not downloaded), kept as the hub
  keeps it."""
  digest = hashlib.sha1(repo_id.encode())
  for name in sorted(files):
    digest.update(name.encode() + hashlib.sha256(files[name]).digest())
  commit = digest.hexdigest()
  root = Path(cache) / f"models--{repo_id.replace('/', '--')}"
  for name, data in files.items():
    blob = root / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = root / "snapshots" / commit / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
  if listing is not None:
    (root / "trees").mkdir(exist_ok=True)
    entries = {
      name: {"size": len(data), "blob_id": hashlib.sha1(data).hexdigest()}
      for name, data in listing.items()
    }
    tree = {"format_version": 1, "files": entries}
    (root / "trees" / f"{commit}.json").write_text(json.dumps(tree))
  for ref in refs:
    (root / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)  # no newline, as the hub writes it
  return commit


def write_directory(cache: Path, repo_id: str, directory: Path, **kwargs) -> str:
  """write_repo of every file of a directory (e.g. a save_pretrained output)."""
  files = {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir()) if p.is_file()}
  return write_repo(cache, repo_id, files, **kwargs)


def json_bytes(obj) -> bytes:
  return (json.dumps(obj, indent=2) + "\n").encode()
