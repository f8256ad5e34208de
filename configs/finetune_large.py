r"""Finetuning of ConvNeXt V2-Large (paper Tables 9-13; numbers in configs/recipes.py).

arg: 'STAGE[,RESOLUTION]', STAGE in1k (default) | in22k | in22k_to_in1k, RESOLUTION 224 (default) | 384.

    # ImageNet-1K after FCMAE pretraining (Tables 9-11):
    python finetune.py --config configs/finetune_large.py --workdir /path/to/ft1k \
        --config.init_from=/path/to/pretrain_workdir

    # ImageNet-22K intermediate (Table 12), then 22K -> 1K (Table 13) at 224 or 384:
    python finetune.py --config configs/finetune_large.py:in22k --workdir /path/to/ft22k \
        --config.data.name=folder:/path/to/imagenet22k --config.init_from=/path/to/pretrain_workdir
    python finetune.py --config configs/finetune_large.py:in22k_to_in1k,384 --workdir /path/to/ft22k_1k_384 \
        --config.init_from=/path/to/ft22k
"""

from configs import common


def get_config(arg=None):
  return common.finetune_from_arg("large", arg)
