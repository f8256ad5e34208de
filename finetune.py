"""ImageNet finetuning and evaluation of ConvNeXt V2.

    python finetune.py --config configs/finetune_base.py --workdir DIR --config.init_from=PATH
    python finetune.py --config configs/finetune_demo.py --workdir runs/finetune_demo
    python finetune.py --config configs/finetune_base.py --workdir DIR \\
        --config.init_from=convnextv2_base_1k_224_ema.pt --config.eval_only=True

init_from: a train.py workdir or checkpoint, a `python -m models.convert` output, or an
official / Hugging Face / timm PyTorch checkpoint. Running the same command again resumes from
the workdir's latest checkpoint. Multi-process flags as in train.py.
"""

from absl import app, flags

from trainer import cli

FLAGS = flags.FLAGS
cli.define_flags("Config file (configs/finetune_*.py).")


def main(argv):
  del argv
  from classify import task
  from trainer import loop
  config = FLAGS.config
  cli.start(FLAGS)
  if config.eval_only:
    task.evaluate_only(config, FLAGS.workdir)
  else:
    loop.train_and_evaluate(config, FLAGS.workdir, task.make_task(config, FLAGS.workdir))


if __name__ == "__main__":
  app.run(main)
