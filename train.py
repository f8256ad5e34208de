"""FCMAE pretraining of ConvNeXt V2.

    python train.py --config configs/fcmae_base.py --workdir /path/to/workdir
    python train.py --config configs/fcmae_demo.py --workdir runs/demo      # built-in data, CPU
    python train.py --config configs/fcmae_huge.py --compile_only=v5p:4x4x4  # fit and cost on a TPU slice

Overrides: --config.batch_size=1024 --config.mesh.fsdp=8 ... (a mistyped field is an error); the
fields are listed by `python -m configs.schema`. Running the same command again resumes from the
workdir's latest checkpoint. Several processes: JAX's distributed runtime starts by itself on TPU
pods and under SLURM; otherwise pass --coordinator_address=HOST:PORT --num_processes=N
--process_id=I.
"""

from absl import app, flags

from core import errors
from trainer import cli

FLAGS = flags.FLAGS
cli.define_flags("Config file (configs/fcmae_*.py[:arg]).")
flags.adopt_module_key_flags(cli)  # --help lists them


def main(argv):
  del argv
  config = cli.load_config(FLAGS)
  from fcmae import pretrain
  from trainer import loop

  cli.main(
    FLAGS,
    config,
    pretrain.make_task,
    lambda config, workdir, allow: loop.train_and_evaluate(
      config, workdir, pretrain.make_task(config, workdir), allow_config_change=allow
    ),
  )


if __name__ == "__main__":
  app.run(errors.guarded(main), flags_parser=cli.parse_flags)
