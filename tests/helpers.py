"""Small utilities shared by the tests."""

import socket

import jax


def perturb(params, scale=0.1, seed=1):
  """Adds noise to GRN, LayerNorm and bias parameters (zero or one at init), so that no part of
  a block is an identity and parity tests exercise every parameter."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  out = []
  for (path, leaf), key in zip(leaves, keys):
    name = jax.tree_util.keystr(path)
    if any(s in name for s in ("gamma", "beta", "scale", "bias")):
      leaf = leaf + scale * jax.random.normal(key, leaf.shape)
    out.append(leaf)
  return jax.tree_util.tree_unflatten(treedef, out)


def override(config, changes: dict):
  """Sets dotted fields of a config ({"mesh.data": 2, "batch_size": 16}) and returns it."""
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


# The end-to-end tests scan the identical blocks of a stage, as Large and Huge run: the same function
# (tests/models/test_convnextv2.py) and a fifth less to compile, which is most of a short run here.
SCAN = {"model.scan": True}


def finetune_config(**changes):
  """The finetuning demo, six steps on one device (8 fake devices on 2 cores are slow)."""
  from configs import finetune_demo

  return override(
    finetune_demo.get_config(),
    {
      "batch_size": 32,
      "total_steps": 6,
      "warmup_steps": 2,
      "log_every_steps": 3,
      "checkpoint_every_steps": 6,
      "eval_every_steps": 6,
      "mesh.data": 1,
      "mesh.fsdp": 1,
      **SCAN,
      **changes,
    },
  )


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on (for a coordinator or an emulator)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
