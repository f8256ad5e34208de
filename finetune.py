"""ImageNet finetuning and evaluation of ConvNeXt V2.

    python finetune.py --config configs/finetune_base.py --workdir DIR --config.init_from=PATH
    python finetune.py --config configs/finetune_demo.py --workdir runs/finetune_demo
    python finetune.py --config configs/finetune_base.py --workdir DIR \\
        --config.init_from=convnextv2_base_1k_224_ema.pt --config.eval_only=True
    python finetune.py --config configs/finetune_base.py --compile_only=v5e:8x8

init_from: a train.py workdir or checkpoint, a `python -m models.convert` output, an
official / Hugging Face / timm PyTorch checkpoint (local or gs://), or hf:REPO[@REVISION]. The
config fields are listed by `python -m configs.schema`. Running the same command again resumes
from the workdir's latest checkpoint.
Multi-process flags as in train.py.
"""

from absl import app, flags

from core import errors
from trainer import cli

FLAGS = flags.FLAGS
cli.define_flags("Config file (configs/finetune_*.py[:arg]).")
flags.adopt_module_key_flags(cli)  # --help lists them


def main(argv):
  del argv
  config = cli.load_config(FLAGS)
  from classify import task
  from trainer import loop

  def job(config, workdir, allow_config_change):
    if config.eval_only:
      return loop.evaluate_only(config, workdir, task.make_task(config, workdir))
    return loop.train_and_evaluate(
      config, workdir, task.make_task(config, workdir), allow_config_change=allow_config_change
    )

  cli.main(FLAGS, config, task.make_task, job)


if __name__ == "__main__":
  app.run(errors.guarded(main), flags_parser=cli.parse_flags)
