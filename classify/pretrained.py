"""init_from: a pretrained model's weights loaded into a classifier.

Sources: a train.py or finetune.py workdir or checkpoint, a `models.convert` output directory,
or an official / Hugging Face / timm PyTorch checkpoint. Every parameter whose name and shape fit
is loaded (a 3-channel stem adapted to model.in_chans, models/channels.py); the FCMAE decoder and
anything else the classifier does not have is skipped; what the source lacks (a new head) keeps
its fresh, scaled init. The log lists all three groups. An
encoder whose shapes do not fit is an error that names them.
"""

from __future__ import annotations

import numpy as np
from flax import traverse_util

from core.errors import UserError
from models import channels


class InitFromError(UserError, ValueError):
  """init_from holds weights of another model."""


def merge_pretrained(fresh: dict, pretrained: dict, *, source: str = "") -> tuple[dict, dict]:
  """Fresh params with every leaf the pretrained tree has (same name and shape) replaced.

  FCMAE params contribute their encoder; the decoder is reported as skipped. Returns (params,
  report) with report lists `loaded`, `skipped` (in the source only) and `initialized` (kept
  fresh). A shape mismatch outside the head is an error."""
  fresh_flat = traverse_util.flatten_dict(fresh, sep="/")
  if "encoder" in pretrained:  # FCMAE params: the encoder is the classifier's body
    pretrained = {
      **{k: v for k, v in pretrained.items() if k != "encoder"},
      **pretrained["encoder"],
    }
  adapted = None
  if "stem" in pretrained and "stem" in fresh:  # 3-channel weights into in_chans channels
    pretrained, adapted = channels.adapt_encoder(pretrained, channels.stem_channels(fresh))
  source_flat = traverse_util.flatten_dict(pretrained, sep="/")
  loaded, initialized, mismatched = [], [], []
  merged = {}
  for name, leaf in fresh_flat.items():
    if name in source_flat and tuple(np.shape(source_flat[name])) == tuple(leaf.shape):
      merged[name] = np.asarray(source_flat[name], np.float32)
      loaded.append(name)
    else:
      if name in source_flat:
        mismatched.append(
          f"{name}: checkpoint {tuple(np.shape(source_flat[name]))}, model {tuple(leaf.shape)}"
        )
      merged[name] = leaf
      initialized.append(name)
  bad = [m for m in mismatched if not m.startswith("head/")]
  if bad:
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    raise InitFromError(
      f"init_from {source}: shapes do not fit the model "
      f"({len(bad)} tensors; is it the same variant?):\n  " + "\n  ".join(bad[:20]) + more
    )
  skipped = sorted(set(source_flat) - set(fresh_flat))
  report = {"loaded": loaded, "skipped": skipped, "initialized": initialized, "adapted": adapted}
  return traverse_util.unflatten_dict(merged, sep="/"), report


def describe(source: str, report: dict) -> str:
  """One log line: how many tensors were loaded, skipped and freshly initialised, by module."""

  def modules(names):
    groups = sorted({name.rsplit("/", 1)[0] for name in names})
    return ", ".join(groups) if groups else "nothing"

  return (
    f"init_from {source}: loaded {len(report['loaded'])} tensors; skipped "
    f"{len(report['skipped'])} ({modules(report['skipped'])}); freshly initialized "
    f"{len(report['initialized'])} ({modules(report['initialized'])})"
    + (f"; {report['adapted']}." if report.get("adapted") else ".")
  )
