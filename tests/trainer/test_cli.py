"""trainer/cli.py: user errors are one line and exit status 2, bugs keep their traceback, and a
second Ctrl-C ends without one; the compilation cache's directory."""

import pytest

from trainer import cli
from trainer.errors import UserError


class _UserError(UserError, ValueError):
  pass


def _exit_of(fn, capsys):
  with pytest.raises(SystemExit) as info:
    cli.guarded(fn)([])
  return info.value.code, capsys.readouterr().err


def test_user_errors_are_one_line_with_status_2(capsys, monkeypatch):
  monkeypatch.delenv("FCMAE_TRACEBACK", raising=False)

  def bad_input(argv):
    raise _UserError("--config.x=1: expected 2")

  code, err = _exit_of(bad_input, capsys)
  assert code == 2 and err == "error: --config.x=1: expected 2\n"
  monkeypatch.setenv("FCMAE_TRACEBACK", "1")  # the traceback, on request
  with pytest.raises(_UserError):
    cli.guarded(bad_input)([])


def test_bugs_keep_their_traceback_and_ctrl_c_is_status_130(capsys):
  def bug(argv):
    raise ValueError("a bug")

  with pytest.raises(ValueError, match="a bug"):
    cli.guarded(bug)([])

  def interrupted(argv):
    raise KeyboardInterrupt

  code, err = _exit_of(interrupted, capsys)
  assert code == 130 and err.startswith("error: interrupted") and "Traceback" not in err


def test_compilation_cache_directory(monkeypatch):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  assert cli.compilation_cache_dir("auto", "/runs/a") == "/runs/a/compilation_cache"
  assert cli.compilation_cache_dir("auto", None) is None
  assert cli.compilation_cache_dir("off", "/runs/a") is None
  assert cli.compilation_cache_dir("gs://bucket/xla", "/runs/a") == "gs://bucket/xla"
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/shared/xla")
  assert cli.compilation_cache_dir("auto", "/runs/a") == "/shared/xla"
