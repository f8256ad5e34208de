"""core/errors.py: user errors are one line and exit status 2, bugs keep their traceback, and a
second Ctrl-C ends without one."""

import pytest

from core import errors
from core.errors import UserError


class _UserError(UserError, ValueError):
  pass


def _exit_of(fn, capsys):
  with pytest.raises(SystemExit) as info:
    errors.guarded(fn)([])
  return info.value.code, capsys.readouterr().err


def test_user_errors_are_one_line_with_status_2(capsys, monkeypatch):
  monkeypatch.delenv("FCMAE_TRACEBACK", raising=False)

  def bad_input(argv):
    raise _UserError("--config.x=1: expected 2")

  code, err = _exit_of(bad_input, capsys)
  assert code == 2 and err == "error: --config.x=1: expected 2\n"
  monkeypatch.setenv("FCMAE_TRACEBACK", "1")  # the traceback, on request
  with pytest.raises(_UserError):
    errors.guarded(bad_input)([])


def test_bugs_keep_their_traceback_and_ctrl_c_is_status_130(capsys):
  def bug(argv):
    raise ValueError("a bug")

  with pytest.raises(ValueError, match="a bug"):
    errors.guarded(bug)([])

  def interrupted(argv):
    raise KeyboardInterrupt

  code, err = _exit_of(interrupted, capsys)
  assert code == 130 and err.startswith("error: interrupted") and "Traceback" not in err
