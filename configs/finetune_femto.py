r"""Finetuning of ConvNeXt V2-Femto (paper Tables 9-13; numbers in configs/recipes.py).

arg: '[in1k][,RESOLUTION]'; the paper has no ImageNet-22K recipe for this size.

    # ImageNet-1K after FCMAE pretraining (Tables 9-11):
    python finetune.py --config configs/finetune_femto.py --workdir /path/to/ft1k \
        --config.init_from=/path/to/pretrain_workdir
"""

from configs import common


def get_config(arg=None):
  return common.finetune_from_arg("femto", arg)
