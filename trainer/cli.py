"""Command-line plumbing shared by train.py and finetune.py: flags, start-up, compile-only runs,
and what a user sees when something is wrong.

An error in what the user gave (config field or argument, data, checkpoint, weights, topology)
is one message on stderr and exit status 2: the project's own exceptions for bad input derive from
`core.errors.UserError`. Anything else is a bug and keeps its traceback. FCMAE_TRACEBACK=1
shows the traceback of user errors too.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable

from absl import flags

from core import sharding, storage, wandb_writer
from core.errors import UserError, fail, one_line

CONFIG_HELP = (
  "The config fields, their meaning, defaults and checks are listed by `python -m "
  "configs.schema` (docs/config.md); override any with --config.FIELD=VALUE (a mistyped field "
  "is an error)."
)


def define_config_flag(config_help: str) -> None:
  """--config: a locked ml_collections config file, overridable field by field with
  --config.FIELD=VALUE. Every entry point and benchmark reads its config through this flag and
  `read_config`."""
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, f"{config_help} {CONFIG_HELP}", lock_config=True)
  flags.mark_flag_as_required("config")


def define_flags(config_help: str) -> None:
  """--config, --workdir, --compile_only and the multi-process flags of train.py / finetune.py."""
  define_config_flag(config_help)
  flags.DEFINE_string(
    "workdir",
    None,
    "Where checkpoints, metrics and pictures go; default runs/<config name> (e.g. "
    "runs/fcmae_base), where the same command again resumes.",
  )
  flags.DEFINE_string(
    "compile_only",
    "",
    "TOPOLOGY: build the run for a TPU slice (v4:2x2x2, "
    "v5e:4x4, v5p:4x4x4, v6e:8x8) or GPU nodes (h100:8, h100:2x8), compile it "
    "on this machine, print its memory per device, FLOPs and compile time, and "
    "exit (1 if it does not fit). Reads no data, writes nothing.",
  )
  flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume a workdir with a config that changes "
    "what is computed (variant, batch, schedule, ...); the workdir keeps each "
    "config it ran with (config.<step>.json).",
  )
  flags.DEFINE_string(
    "coordinator_address",
    "",
    "HOST:PORT of process 0, for multi-process "
    "runs outside TPU pods and SLURM (where it is detected).",
  )
  flags.DEFINE_integer("num_processes", 0, "Number of processes (with --coordinator_address).")
  flags.DEFINE_integer("process_id", -1, "This process's index (with --coordinator_address).")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (app.run's flags_parser), with the --config file and the
  --config.FIELD overrides checked against configs/schema.py first, and absl's own exception
  types turned into one line."""
  check_config_arguments(argv)
  try:
    return flags.FLAGS(argv)
  except flags.IllegalFlagValueError as e:  # a value refused, or an error in the config file
    inner = _innermost(e)
    fail(f"{inner if isinstance(inner, UserError) else one_line(e)} See --help.")
  except flags.Error as e:  # an unknown flag, a missing --config
    fail(f"{one_line(e)} See --help.")
  except (AttributeError, KeyError) as e:  # ml_collections: a field of the schema, not this file's
    bad = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    fail(
      f"no such config field in this config file: {one_line(_innermost(e))} (overrides given: "
      f"{', '.join(bad)}). {CONFIG_HELP}"
    )


def check_config_arguments(argv: list[str]) -> None:
  """The config file of --config exists, and each --config.FIELD=VALUE names a field of the
  schema with a value of its type: one line and exit status 2 before absl reads them."""
  from configs import recipes, schema

  args = list(argv[1:])
  for i, arg in enumerate(args):
    name, has_value, value = arg.partition("=")
    if not has_value and i + 1 < len(args) and not args[i + 1].startswith("-"):
      value = args[i + 1]
    if name == "--config" and value:
      file = value.split(":", 1)[0]
      if not os.path.isfile(file):
        fail(f"--config: no such config file {file}. See --help.")
    elif name.startswith("--config."):
      field = schema.BY_NAME.get(name.removeprefix("--config."))
      if field is None:
        close = difflib.get_close_matches(name.removeprefix("--config."), schema.BY_NAME, n=1)
        hint = f" Did you mean --config.{close[0]}?" if close else ""
        fail(f"no such config field: {name}.{hint} {CONFIG_HELP}")
      default = field.default_for(recipes.SIZES[0])
      kind = type(default)
      if kind in (int, float) and (has_value or value):
        try:
          kind(value)
        except ValueError:
          fail(f"{name}={value!r}: expected {'an integer' if kind is int else 'a number'}.")


def _innermost(error: BaseException) -> BaseException:
  """The exception at the bottom of one that wraps others (absl wraps the config file's own
  error in its IllegalFlagValueError; ml_collections a KeyError in an AttributeError)."""
  while (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  return error


def read_config(flag_values):
  """The --config of the command line with its overrides, read and checked (configs/schema.py:
  validate) before anything heavy is imported or built: a bad one is one message and exit
  status 2. Sets up the storage layer (core/storage.py setup) for the paths that follow."""
  from configs import schema

  storage.setup()
  try:
    config = flag_values.config
    config.keys()  # a config file is read when first asked for
  except (flags.Error, OSError) as e:
    inner = _innermost(e)
    fail(f"{inner if isinstance(inner, UserError) else one_line(inner)} See --help.")
  schema.validate(config)
  return config


def load_config(flag_values):
  """`read_config`, and the paths of train.py / finetune.py checked before anything is built."""
  config = read_config(flag_values)
  if not flag_values.workdir and not flag_values.compile_only:
    flag_values.workdir = default_workdir(flag_values["config"].config_filename)
    print(
      f"Workdir {flag_values.workdir} (the default for this config; --workdir chooses another; "
      "the same command again resumes there).",
      flush=True,
    )
  wandb_writer.require(config.log.wandb)  # installed, before anything is built
  init_from = config.init_from if "init_from" in config else ""
  if flag_values.workdir:  # before anything is built: bucket and credentials
    storage.check_location(flag_values.workdir, "--workdir")
  if init_from.startswith("hf:"):  # downloaded now (once per cache: the hub locks its files)
    config.init_from = _hub_weights(init_from, download=not flag_values.compile_only)
  elif init_from:
    storage.check_location(init_from, "--config.init_from")
    if not storage.exists(init_from):
      fail(f"--config.init_from={init_from!r} does not exist.")
  return config


def default_workdir(config_argument: str) -> str:
  """runs/<config name>: 'configs/fcmae_base.py' -> runs/fcmae_base, 'configs/fcmae_base.py:800'
  -> runs/fcmae_base-800 (another schedule, another run)."""
  path, _, argument = config_argument.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if argument:
    name += "-" + re.sub(r"[^A-Za-z0-9_.]+", "-", argument).strip("-")
  return os.path.join("runs", name)


def _hub_weights(source: str, download: bool) -> str:
  """hf:REPO[@REVISION] checked and, unless only compiling, downloaded and pinned to its commit
  (hf:REPO@COMMIT, which the workdir's config and the log then show)."""
  from models import hub

  hub.parse(source)
  return hub.pin(source) if download else source


def main(flag_values, config, make_task: Callable, job: Callable[..., object]) -> None:
  """The body of an entry point: `--compile_only` compiles `make_task`'s run for a topology and
  exits; otherwise the process joins the distributed runtime and runs `job(config, workdir,
  allow_config_change)`."""
  import jax

  if flag_values.compile_only:
    jax.config.update("jax_platforms", "cpu")  # the host compiles; no accelerator is looked for
    from trainer import compile_only

    sys.exit(compile_only.compile_and_report(config, make_task, flag_values.compile_only))
  start(flag_values, config)
  job(config, flag_values.workdir, flag_values.allow_config_change)


def start(flag_values, config) -> None:
  """Joins the distributed runtime if asked to, turns on the persistent compilation cache, sets
  up readable logs on process 0, and how the checkpoints' GCS requests are retried."""
  sharding.maybe_initialize_distributed(
    flag_values.coordinator_address, flag_values.num_processes, flag_values.process_id
  )
  retry = config.storage
  storage.set_retries(retry.retries, retry.retry_delay, retry.retry_max_delay)
  import jax
  from absl import logging as absl_logging

  from core.logs import say

  # Library INFO logs (orbax writes several lines per save) drown the progress lines.
  absl_logging.set_verbosity(absl_logging.WARNING)
  cache = compilation_cache_dir(config.compilation_cache, flag_values.workdir)
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
  say(
    f"JAX {jax.__version__} on {jax.default_backend()}: {jax.device_count()} devices over "
    f"{jax.process_count()} processes" + (f"; compilation cache {cache}." if cache else ".")
  )


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
