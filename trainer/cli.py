"""Command-line plumbing shared by train.py and finetune.py: distributed flags and start-up."""

from absl import flags

from trainer import sharding


def define_flags(config_help: str) -> None:
  """--config (locked ml_collections file, overridable field by field), --workdir, and the
  multi-process flags."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and pictures go.")
  flags.mark_flags_as_required(["config", "workdir"])
  flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0, for multi-process "
                      "runs outside TPU pods and SLURM (where it is detected).")
  flags.DEFINE_integer("num_processes", 0, "Number of processes (with --coordinator_address).")
  flags.DEFINE_integer("process_id", -1, "This process's index (with --coordinator_address).")


def start(flag_values) -> None:
  """Joins the distributed runtime if asked to, and sets up readable logs on process 0."""
  sharding.maybe_initialize_distributed(flag_values.coordinator_address,
                                        flag_values.num_processes, flag_values.process_id)
  import jax
  from absl import logging as absl_logging
  from trainer.logs import say
  # Library INFO logs (orbax writes several lines per save) drown the progress lines.
  absl_logging.set_verbosity(absl_logging.WARNING)
  say(f"JAX {jax.__version__} on {jax.default_backend()}: {jax.device_count()} devices over "
      f"{jax.process_count()} processes.")
