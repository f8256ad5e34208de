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


def retry_delay(v, c):
  return None if v > 0 else "expected seconds > 0"


def max_delay(v, c):
  """storage.retry_max_delay: no shorter than storage.retry_delay."""
  first = c.storage.retry_delay
  return None if v >= first else f"expected at least storage.retry_delay ({first})"


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


def _channel_values(v: str) -> tuple[float, ...]:
  """data.mean / data.std 'A,B,C' -> (A, B, C); '' -> (); ValueError if not numbers."""
  return tuple(float(x) for x in v.split(",")) if v.strip() else ()


def channel_stats(v, c):
  try:
    values = _channel_values(v)
  except ValueError:
    return "expected numbers separated by commas, one per channel, e.g. 0.45,0.45,0.45"
  if values and len(values) != c.model.in_chans:
    return f"expected {c.model.in_chans} values (model.in_chans), got {len(values)}"
  return None


def channel_std(v, c):
  problem = channel_stats(v, c)
  if problem is None and any(x <= 0 for x in _channel_values(v)):
    return "expected standard deviations > 0"
  return problem


def profile_bounds(steps: str) -> tuple[int, int] | None:
  """config.profile_steps 'START:END' -> (START, END) with 0 <= START < END; None if not so."""
  start, sep, stop = steps.partition(":")
  if not (sep and start.isdigit() and stop.isdigit() and int(start) < int(stop)):
    return None
  return int(start), int(stop)


def profile_steps(v, c):
  if v and profile_bounds(v) is None:
    return "expected START:END with START < END, e.g. 10:15"
  return None
