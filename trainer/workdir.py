"""A workdir remembers what it is: the config it was trained with, and one metrics row per step.

On resume the stored WORKDIR/config.json is compared with the new config. Fields that change what
is computed are refused unless the user says so (`--allow_config_change`); fields that change only
how and how often things are done change freely, so a run can move from one pod slice or node
to another; more steps or epochs extend the run. Whenever the config changes, the one it replaces
is kept as config.<step>.json, so the history says which steps ran under which config. Metrics
rows of steps past the restored checkpoint (done again after a resume) move to
metrics.discarded.jsonl, so metrics.jsonl has one row per step. The workdir may be local or
gs://BUCKET/PATH (core/storage.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

from configs import schema
from core import storage
from core.errors import UserError


class ConfigChangeError(UserError, ValueError):
  """The new config would change what the workdir's steps so far computed."""


def flat(config) -> dict[str, Any]:
  """{'optim.base_lr': 0.0015, ...} of a ConfigDict or of a dict read from config.json."""
  tree = (
    json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else config
  )
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      if isinstance(value, dict):
        walk(f"{prefix}{key}.", value)
      else:
        out[prefix + key] = value

  walk("", tree)
  return out


def _rule(change) -> str:
  return schema.resume_rule(change[0])


def differences(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
  """(field, old, new) of every field whose value differs (missing on one side: None)."""
  return [
    (k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
  ]


def describe(changes) -> str:
  return "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes)


def check(workdir: str, config, *, allow_change: bool, say) -> bool:
  """Compares `config` with the workdir's config.json before a resume. Raises ConfigChangeError
  for changes to what is computed unless `allow_change`; says what changes otherwise. True when
  the config differs (then `save` keeps the old one)."""
  path = os.path.join(workdir, "config.json")
  if not storage.isfile(path):
    return False
  try:
    old = flat(json.loads(storage.read_text(path)))
  except ValueError as e:
    raise ConfigChangeError(
      f"{path} is not readable JSON ({e}); it records how the steps in "
      f"{workdir} were trained. Restore it or start a new workdir."
    ) from None
  changes = differences(old, flat(config))
  computed = [c for c in changes if _rule(c) == schema.REFUSE]
  if computed and not allow_change:
    raise ConfigChangeError(
      f"{workdir} was trained with another config; these changes would change what is "
      f"computed: {describe(computed)}. Resume with the stored config ({path}), start a new "
      "--workdir, or pass --allow_config_change to go on with the new one (config.json then "
      "keeps its history)."
    )
  length = [c for c in changes if _rule(c) == schema.EXTEND]
  if length:
    say(
      f"The run's length changes ({describe(length)}): the learning-rate schedule follows the "
      "new length from here on."
    )
  if computed:
    say(f"Config changes (--allow_config_change): {describe(computed)}.")
  free = [c for c in changes if _rule(c) == schema.FREE]
  if free:
    say(f"Config changes that leave the computation as it was: {describe(free)}.")
  return bool(changes)


def save(workdir: str, config, step: int, *, changed: bool) -> None:
  """Writes WORKDIR/config.json; when the config `changed`, the one it replaces is kept as
  config.<step>.json (the config of the steps up to `step`)."""
  path = os.path.join(workdir, "config.json")
  exists = storage.isfile(path)
  if changed and exists:
    storage.write_text(os.path.join(workdir, f"config.{step}.json"), storage.read_text(path))
  if changed or not exists:
    storage.write_text(path, config.to_json_best_effort(indent=2))


def discard_metrics_after(workdir: str, step: int) -> int:
  """Moves the rows of WORKDIR/metrics.jsonl with a step past `step` to metrics.discarded.jsonl
  (they were logged before an interruption and are about to be done again); returns how many."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not storage.isfile(path):
    return 0
  lines = [line for line in storage.read_text(path).splitlines(keepends=True) if line.strip()]
  keep, drop = [], []
  for line in lines:
    try:
      later = json.loads(line).get("step", 0) > step
    except ValueError:  # a line cut short by a kill: nothing of it can be trusted
      later = True
    (drop if later else keep).append(line if line.endswith("\n") else line + "\n")
  if drop:
    storage.append_text(os.path.join(workdir, "metrics.discarded.jsonl"), "".join(drop))
    storage.write_text(path, "".join(keep))
  return len(drop)
