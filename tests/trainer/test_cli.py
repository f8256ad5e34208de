"""trainer/cli.py: the compilation cache's directory."""

from trainer import cli


def test_compilation_cache_directory(monkeypatch):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  assert cli.compilation_cache_dir("auto", "/runs/a") == "/runs/a/compilation_cache"
  assert cli.compilation_cache_dir("auto", None) is None
  assert cli.compilation_cache_dir("off", "/runs/a") is None
  assert cli.compilation_cache_dir("gs://bucket/xla", "/runs/a") == "gs://bucket/xla"
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/shared/xla")
  assert cli.compilation_cache_dir("auto", "/runs/a") == "/shared/xla"
