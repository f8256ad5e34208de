"""Command-line plumbing shared by train.py and finetune.py: distributed flags and start-up."""

from absl import flags

from fcmae import sharding


def define_distributed_flags() -> None:
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
  from fcmae.metrics import say
  # Library INFO logs (orbax writes several lines per save) drown the progress lines.
  absl_logging.set_verbosity(absl_logging.WARNING)
  say(f"JAX {jax.__version__} on {jax.default_backend()}: {jax.device_count()} devices over "
      f"{jax.process_count()} processes.")
