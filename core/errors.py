"""Errors in what the user gave, and library errors made readable.

`UserError` is the one base class of the project's exceptions for bad input: a config field or
argument, a path, a dataset, an image, a checkpoint, weights, a topology. The command line
(trainer/cli.py) prints its message as one line and exits with status 2; anything else is a bug
and keeps its traceback. Each subclass also derives from the builtin error it refines
(ValueError, FileNotFoundError), so callers that catch those still do. This module imports
nothing of the project, so every package (configs and models too) may use it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys
import threading
from collections.abc import Callable

# Status codes of absl::Status, which tensorstore, XLA and the TPU runtime put in their messages.
_STATUS = re.compile(
  r"\b(OUT_OF_RANGE|DATA_LOSS|NOT_FOUND|INVALID_ARGUMENT|FAILED_PRECONDITION|PERMISSION_DENIED|"
  r"UNAUTHENTICATED|UNAVAILABLE|RESOURCE_EXHAUSTED|UNKNOWN|INTERNAL): [^\[\n]{0,200}"
)


class UserError(Exception):
  """Something the user gave cannot be used; the message says what, where, and what to do."""


def one_line(error: BaseException, limit: int = 240) -> str:
  """One line on why a library call failed: the status line (`OUT_OF_RANGE: ...`) of the error
  or of its causes if there is one, else the first non-empty line of its message, else its type.

  Libraries wrap the error that matters (tensorstore in orbax, the unpickler in torch.load) and
  write tracebacks or several paragraphs into messages; a user needs the line that names it."""
  texts = []
  while error is not None and len(texts) < 5:
    texts.append((type(error).__name__, str(error)))
    error = error.__cause__ or error.__context__
  for _, text in texts:
    found = _STATUS.search(text)
    if found:
      return found.group(0).strip()[:limit]
  name, text = texts[0]
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[0][:limit] if lines else name


@contextlib.contextmanager
def quiet_aftermath():
  """When an orbax restore fails, its other reads fail too, in threads and coroutines that print
  their tracebacks (hundreds of lines) after the error that matters has been raised. They say
  nothing new: within this block, and for what it leaves to garbage collection, they are
  dropped. The error itself still propagates."""
  hooks = sys.unraisablehook, threading.excepthook
  asyncio_logger = logging.getLogger("asyncio")
  level = asyncio_logger.level
  sys.unraisablehook = threading.excepthook = lambda *args: None
  asyncio_logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    gc.collect()  # the failed reads' coroutines, while their complaints are still dropped
    sys.unraisablehook, threading.excepthook = hooks
    asyncio_logger.setLevel(level)


def fail(message: str, status: int = 2):
  """Ends the process with one message on stderr."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def guarded(main: Callable) -> Callable:
  """main(argv) whose user errors end in one message and exit status 2, and whose Ctrl-C (the
  second one, after the first asked for a checkpoint) ends without a traceback."""

  def wrapper(argv):
    try:
      return main(argv)
    except KeyboardInterrupt:
      fail(
        "interrupted; the run stopped without saving (the checkpoints saved before are "
        "intact: run the same command again to resume).",
        status=130,
      )
    except Exception as e:  # noqa: BLE001
      if isinstance(e, UserError) and not os.environ.get("FCMAE_TRACEBACK"):
        fail(str(e))
      raise

  return wrapper
