"""FCMAE pretraining of ConvNeXt V2-Nano on ImageNet-1K (paper Table 8: 1600 epochs, batch 4096).

python train.py --config configs/fcmae_nano.py --workdir /path/to/workdir
python train.py --config configs/fcmae_nano.py:800 --workdir /path/to/workdir   # 800 epochs
"""

from configs import common


def get_config(arg=None):
  return common.pretrain_from_arg("nano", arg)
