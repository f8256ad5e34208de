"""The checks of the config fields (configs/schema.py's FIELDS names one per field): each takes
(value, config) and returns None when fine, else what was expected ("expected ...")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

STRIDE = 32  # models/convnextv2.py's TOTAL_STRIDE: image sizes are multiples of it

Check = Callable[[Any, Any], "str | None"]


def one_of(*values) -> Check:
  shown = ", ".join(repr(v) if v == "" else str(v) for v in values)
  return lambda v, c: None if v in values else f"expected one of {shown}"


def between(lo, hi, *, lo_open=False, hi_open=False, what="a number") -> Check:
  def check(v, c):
    ok = (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
    return (
      None
      if ok
      else f"expected {what} in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    )

  return check


def positive(v, c):
  return None if v >= 1 else "expected a positive integer"


def non_negative(v, c):
  return None if v >= 0 else "expected a number >= 0"


def image_size(v, c):
  if v <= 0 or v % STRIDE:
    return f"expected a positive multiple of {STRIDE} (the encoder's stride), e.g. 224"
  return None


def grad_accum(v, c):
  if v < 1:
    return "expected a positive integer"
  return None if c.batch_size % v == 0 else f"expected a divisor of batch_size {c.batch_size}"


def total_steps(v, c):
  if v < 0:
    return "expected a number >= 0"
  return None if v > 0 or c.num_epochs > 0 else "expected num_epochs or total_steps > 0"


def mask_ratio(v, c):
  if not 0 <= v < 1:
    return "expected a ratio in [0, 1)"
  patches = (c.data.image_size // STRIDE) ** 2
  if int(patches * (1 - v)) < 1:
    return f"it leaves no visible patch of the {patches} at {c.data.image_size} px"
  return None
