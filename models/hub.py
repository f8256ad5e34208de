"""Published weights by name: `hf:REPO[@REVISION]` wherever a weights path is accepted.

    hf:facebook/convnextv2-atto-1k-224          transformers layout (model.safetensors or
                                                pytorch_model.bin, config.json)
    hf:timm/convnextv2_atto.fcmae@<commit>      timm layout, pinned to a commit

The files are fetched through `huggingface_hub` into its cache (HF_HOME / HF_HUB_CACHE), which
`HF_HUB_OFFLINE=1` reads without any network. Only the weights are downloaded (one format: safetensors
when the repository has them, else pytorch_model.bin) plus config.json, which is looked at first so
that a repository of another model is refused before its weights are fetched. What is read is then
the same as for a local path (models/convert.py: safetensors, or torch.load(weights_only=True)).

The revision (a branch, tag or commit; `main` when none is given) is resolved to a commit: it goes
into a converted checkpoint's config.json and, pinned as `hf:REPO@COMMIT`, into a run's config
and log. Several processes sharing one cache download each file once (the hub serialises its
downloads with file locks), and `fetch(..., agree=True)` makes every process read the commit
process 0 resolved, should a branch move between their look-ups.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
from pathlib import Path

from core import errors
from core.errors import UserError

PREFIX = "hf:"
_INDEX = "model.safetensors.index.json"
_SHARDS = "model-*-of-*.safetensors"
_SINGLE_FILES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


class HubError(UserError, ValueError):
  """An `hf:` source that cannot be read: no such repository or revision, not cached while
  offline, or no ConvNeXt V2 weights in it."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
  """A repository's weights at one commit, in the local hub cache."""

  source: str  # as given: hf:REPO[@REVISION]
  repo_id: str
  revision: str  # as asked ('main' when none was given)
  commit: str
  path: Path  # what models.convert reads: the snapshot directory, or its one weights file

  @property
  def pinned(self) -> str:
    """hf:REPO@COMMIT: the same files whatever the branch does later."""
    return f"{PREFIX}{self.repo_id}@{self.commit}"

  def meta(self) -> dict:
    """What a converted checkpoint's config.json records of where its weights came from."""
    return dict(
      source=self.source, hub_repo=self.repo_id, hub_revision=self.revision, hub_commit=self.commit
    )


def is_hub(source) -> bool:
  return isinstance(source, str) and source.startswith(PREFIX)


def parse(source: str) -> tuple[str, str | None]:
  """(repo_id, revision or None) of 'hf:REPO[@REVISION]'; a malformed name is a HubError."""
  from huggingface_hub.errors import HFValidationError
  from huggingface_hub.utils import validate_repo_id

  repo_id, at, revision = source[len(PREFIX) :].partition("@")
  if at and not revision:
    raise HubError(f"{source!r}: nothing after '@'; give a branch, tag or commit, or drop the '@'.")
  try:
    validate_repo_id(repo_id)
  except HFValidationError as e:
    raise HubError(
      f"{source!r} is not hf:REPO[@REVISION] with a Hugging Face repository name "
      f"(ORG/NAME, e.g. hf:facebook/convnextv2-atto-1k-224): {errors.one_line(e).split(' Use ')[0]}"
    ) from None
  return repo_id, revision or None


def fetch(source: str, *, agree: bool = False) -> Snapshot:
  """The weights of `source` (hf:REPO[@REVISION]) in the local hub cache, downloaded if needed.

  agree: with several JAX processes, every process takes the commit process 0 resolved (a
  collective: every process must call it)."""
  snapshot = _fetch(source)
  if agree:
    commit = _commit_of_process_0(snapshot.commit)
    if commit != snapshot.commit:
      pinned = _fetch(f"{PREFIX}{snapshot.repo_id}@{commit}")
      snapshot = dataclasses.replace(pinned, source=source, revision=snapshot.revision)
  return snapshot


def pin(source: str) -> str:
  """hf:REPO@COMMIT of `source`, its files downloaded into the cache."""
  return fetch(source).pinned


def _fetch(source: str) -> Snapshot:
  from huggingface_hub import constants, snapshot_download

  repo_id, revision = parse(source)
  with _readable_errors(source, repo_id, revision):
    # config.json first (small): it resolves the revision and says what model the repository holds.
    folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=["config.json"]))
    commit = folder.name
    files, listed = _repo_files(repo_id, commit, folder)
    _check_model_type(source, folder / "config.json")
    chosen = _weights(source, files)
    if chosen is None and not listed and constants.is_offline_mode():
      raise HubError(_not_cached(source, repo_id, revision, "no weights file in its snapshot"))
    if chosen is None:
      shown = ", ".join(files[:12]) + (f", ... ({len(files)} files)" if len(files) > 12 else "")
      raise HubError(
        f"{source} holds no ConvNeXt V2 weights (no model.safetensors, pytorch_model.bin or "
        f"other {'/'.join(_SINGLE_FILES)} file): it holds {shown or 'no files'}."
      )
    patterns, target = chosen
    folder = Path(snapshot_download(repo_id, revision=commit, allow_patterns=patterns))
  wanted = [f for f in files if f != "config.json" and any(fnmatch.fnmatch(f, p) for p in patterns)]
  missing = [f for f in wanted if not (folder / f).is_file()]
  if missing:  # offline, from a cache whose file listing the hub did not keep
    raise HubError(_not_cached(source, repo_id, revision, f"{', '.join(missing)} missing"))
  return Snapshot(source, repo_id, revision or "main", commit, folder / target)


def _repo_files(repo_id: str, commit: str, folder: Path) -> tuple[list[str], bool]:
  """(the repository's files at `commit`, whether that is the hub's listing of them): the
  listing the hub caches with a download, else (older caches) what the snapshot holds."""
  from huggingface_hub import get_cached_repo_tree
  from huggingface_hub.errors import CachedRepoTreeNotFoundError

  try:
    return sorted(f.path for f in get_cached_repo_tree(repo_id, revision=commit)), True
  except CachedRepoTreeNotFoundError:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()), False


def _check_model_type(source: str, config_path: Path) -> None:
  """A transformers (model_type) or timm (architecture) config.json of another model is refused
  by name, before its weights are downloaded."""
  try:
    config = json.loads(config_path.read_text())
  except (OSError, ValueError):
    return  # no config (or not JSON): the weights' key names decide
  if not isinstance(config, dict):
    return
  model_type, architecture = config.get("model_type"), config.get("architecture")
  if model_type and model_type != "convnextv2":
    names = ", ".join(config.get("architectures") or []) or "no architectures listed"
    raise HubError(
      f"{source} holds no ConvNeXt V2 weights: its config.json is a transformers "
      f"{model_type!r} model ({names}); ConvNeXt V2 is model_type 'convnextv2' "
      f"(e.g. hf:facebook/convnextv2-atto-1k-224)."
    )
  if not model_type and architecture and not str(architecture).startswith("convnextv2"):
    raise HubError(
      f"{source} holds no ConvNeXt V2 weights: its config.json is a timm {architecture!r} model; "
      f"ConvNeXt V2 is convnextv2_* (e.g. hf:timm/convnextv2_atto.fcmae)."
    )


def _weights(source: str, files: list[str]) -> tuple[list[str], str] | None:
  """(patterns of the files to download, what to read relative to the snapshot), or None when
  there are no weights: one format, safetensors first, as transformers chooses."""
  top = [f for f in files if "/" not in f]
  if "model.safetensors" in top:
    return ["model.safetensors", "config.json"], "."
  if _INDEX in top:
    return [_INDEX, _SHARDS, "config.json"], "."
  if "pytorch_model.bin" in top:
    return ["pytorch_model.bin", "config.json"], "."
  singles = [f for f in top if f.endswith(_SINGLE_FILES)]
  if len(singles) == 1:
    return singles, singles[0]
  if singles:
    raise HubError(
      f"{source} holds several weights files ({', '.join(singles)}) and no model.safetensors or "
      f"pytorch_model.bin; download the one you mean (hf download REPO FILE) and pass its path."
    )
  return None


def _not_cached(source: str, repo_id: str, revision: str | None, detail: str) -> str:
  from huggingface_hub import constants

  get = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
  return (
    f"{source} is not in the local Hugging Face cache {constants.HF_HUB_CACHE} ({detail}), and "
    f"HF_HUB_OFFLINE=1 reads only from it: offline mode needs a cached copy. Get one where the "
    f"Hub is reachable, into the same HF_HOME: run this once without HF_HUB_OFFLINE (it "
    f"downloads just the weights), or `{get}`."
  )


@contextlib.contextmanager
def _readable_errors(source: str, repo_id: str, revision: str | None):
  """huggingface_hub's exceptions (several paragraphs each) as one HubError line each."""
  from huggingface_hub import constants
  from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
  )

  try:
    yield
  except GatedRepoError:
    raise HubError(
      f"{source}: {repo_id} is gated on the Hugging Face Hub: accept its terms on "
      f"https://huggingface.co/{repo_id} and log in (hf auth login, or set HF_TOKEN)."
    ) from None
  except RepositoryNotFoundError:
    raise HubError(
      f"{source}: no repository {repo_id!r} on the Hugging Face Hub (or it is private: log in "
      f"with hf auth login, or set HF_TOKEN). The official weights are listed in docs/weights.md."
    ) from None
  except RevisionNotFoundError:
    raise HubError(
      f"{source}: {repo_id} has no revision {revision!r} (a branch, tag or commit hash of the "
      f"repository; omit @REVISION for main)."
    ) from None
  except LocalEntryNotFoundError as e:
    if constants.is_offline_mode():
      raise HubError(_not_cached(source, repo_id, revision, "nothing cached")) from None
    raise HubError(
      f"{source}: the Hugging Face Hub cannot be reached ({errors.one_line(e.__cause__ or e)}) "
      f"and no copy is cached in {constants.HF_HUB_CACHE}. Check the network (HF_ENDPOINT, a "
      f"proxy), or download it where the Hub is reachable (hf download {repo_id}) and point "
      f"HF_HOME at that cache."
    ) from None
  except HfHubHTTPError as e:
    raise HubError(f"{source}: the Hugging Face Hub answered: {errors.one_line(e)}") from None
  except OSError as e:  # the cache: not writable, disk full
    raise HubError(f"{source}: {errors.one_line(e)} (cache {constants.HF_HUB_CACHE}).") from None


def _commit_of_process_0(commit: str) -> str:
  import jax

  if jax.process_count() == 1:
    return commit
  import numpy as np
  from jax.experimental import multihost_utils

  mine = np.frombuffer(commit.encode().ljust(64), np.uint8)
  return bytes(np.asarray(multihost_utils.broadcast_one_to_all(mine))).decode().strip()
