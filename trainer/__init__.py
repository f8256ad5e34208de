"""The training machinery train.py and finetune.py share: loop, mesh and sharding, checkpoints,
optimizer, logs and the command line."""
