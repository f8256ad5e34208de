"""Command-line plumbing shared by train.py and finetune.py: flags, start-up, compile-only runs."""

from __future__ import annotations

import os
import sys
from typing import Callable

from absl import flags

from trainer import sharding


def define_flags(config_help: str) -> None:
  """--config (locked ml_collections file, overridable field by field), --workdir, --compile_only
  and the multi-process flags."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and pictures go (required "
                      "unless --compile_only).")
  flags.DEFINE_string("compile_only", "", "TOPOLOGY: build the run for a TPU slice (v4:2x2x2, "
                      "v5e:4x4, v5p:4x4x4, v6e:8x8) or GPU nodes (h100:8, h100:2x8), compile it "
                      "on this machine, print its memory per device, FLOPs and compile time, and "
                      "exit (1 if it does not fit). Reads no data, writes nothing.")
  flags.mark_flag_as_required("config")
  flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0, for multi-process "
                      "runs outside TPU pods and SLURM (where it is detected).")
  flags.DEFINE_integer("num_processes", 0, "Number of processes (with --coordinator_address).")
  flags.DEFINE_integer("process_id", -1, "This process's index (with --coordinator_address).")


def run(flag_values, make_task: Callable, job: Callable[[object, str], object]) -> None:
  """The body of an entry point: `--compile_only` compiles `make_task`'s run for a topology and
  exits; otherwise the process joins the distributed runtime and runs `job(config, workdir)`."""
  import jax
  config = flag_values.config
  if flag_values.compile_only:
    jax.config.update("jax_platforms", "cpu")  # the host compiles; no accelerator is looked for
    from trainer import compile_only
    sys.exit(compile_only.run(config, make_task, flag_values.compile_only))
  if not flag_values.workdir:
    raise flags.IllegalFlagValueError("--workdir is required (unless --compile_only).")
  start(flag_values, config)
  job(config, flag_values.workdir)


def start(flag_values, config) -> None:
  """Joins the distributed runtime if asked to, turns on the persistent compilation cache, and
  sets up readable logs on process 0."""
  sharding.maybe_initialize_distributed(flag_values.coordinator_address,
                                        flag_values.num_processes, flag_values.process_id)
  import jax
  from absl import logging as absl_logging
  from trainer.logs import say
  # Library INFO logs (orbax writes several lines per save) drown the progress lines.
  absl_logging.set_verbosity(absl_logging.WARNING)
  cache = compilation_cache_dir(config.get("compilation_cache", "off"), flag_values.workdir)
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
  say(f"JAX {jax.__version__} on {jax.default_backend()}: {jax.device_count()} devices over "
      f"{jax.process_count()} processes" + (f"; compilation cache {cache}." if cache else "."))


def compilation_cache_dir(setting: str, workdir: str | None) -> str | None:
  """Where compiled programs are kept between runs: config.compilation_cache 'auto' is
  $JAX_COMPILATION_CACHE_DIR, else WORKDIR/compilation_cache (a restarted pod job compiles
  nothing again); 'off' is none; anything else is a directory."""
  if setting == "off":
    return None
  if setting == "auto":
    env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    return env or (os.path.join(workdir, "compilation_cache") if workdir else None)
  return setting
