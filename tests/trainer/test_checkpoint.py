"""trainer/checkpoint.py: save/restore into shardings, keep-last-N, and kill -9 during a save."""

import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import sharding
from models import pretrained as pretrained_weights
from trainer import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _state(value, size=1000):
  return {
    "step": jnp.asarray(value, jnp.int32),
    "params": {"w": jnp.full((size, 64), float(value)), "b": jnp.full((64,), float(value))},
  }


def test_save_restore_into_shardings_and_keep_last_n(tmp_path):
  mesh = sharding.make_mesh(2, 4)
  abstract = jax.eval_shape(lambda: _state(0))
  shardings = sharding.tree_shardings(abstract, mesh, min_size=1024)
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, jax.device_put(_state(step), shardings))
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3]
  target = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
  state = ckpt.restore(target)
  ckpt.close()
  assert int(state["step"]) == 3
  assert state["params"]["w"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
  np.testing.assert_array_equal(state["params"]["w"], 3.0)
  params = pretrained_weights.restore_train_params(str(tmp_path))
  assert isinstance(params["w"], np.ndarray) and float(params["w"][0, 0]) == 3.0


def test_restore_params_names_a_missing_checkpoint(tmp_path):
  with pytest.raises(pretrained_weights.WeightsError, match="No train checkpoint"):
    pretrained_weights.restore_train_params(str(tmp_path))


def _weights(step):
  # Random, so that the 64 MiB really are written (a constant array compresses to a few KB).
  return jax.random.normal(jax.random.key(step), (4096, 4096))


def _bytes_in_unfinished_saves(directory) -> int | None:
  """Bytes written so far into the temporary directories of saves in progress; None if none."""
  temporary = [os.path.join(directory, name) for name in os.listdir(directory) if "tmp" in name]
  if not temporary:
    return None
  written = 0
  for path in temporary:
    for root, _, files in os.walk(path):
      for name in files:
        try:
          written += os.path.getsize(os.path.join(root, name))
        except FileNotFoundError:  # renamed or removed by the save since the listing
          pass
  return written


def _kill_mid_save(directory, deadline_s=120.0) -> bool:
  """Runs a process that saves 64 MiB checkpoints back to back into `directory` and SIGKILLs it
  once a save has written 1 MiB of its array. True if the kill left that save's temporary
  directory behind (it really was cut off); False if the save finished between the look and the
  kill."""
  script = textwrap.dedent(f"""
      import sys, jax, jax.numpy as jnp
      sys.path.insert(0, {REPO!r})
      from trainer import checkpoint
      from tests.trainer.test_checkpoint import _weights
      ckpt = checkpoint.Checkpointer({str(directory)!r}, keep=100)
      for step in range(1, 1000):
        state = {{"step": jnp.asarray(step), "params": {{"w": _weights(step)}}}}
        ckpt.save(step, state)
        if step == 1:
          ckpt.wait()
          print("first", flush=True)
  """)
  proc = subprocess.Popen(
    [sys.executable, "-c", script],
    stdout=subprocess.PIPE,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  try:
    assert proc.stdout.readline().strip() == "first"
    start = time.monotonic()
    # Watch the next save's temporary directory; the kill follows the first MiB at once.
    while (_bytes_in_unfinished_saves(directory) or 0) < 2**20:
      assert proc.poll() is None, "the saving process ended before it was killed"
      assert time.monotonic() - start < deadline_s, f"no save wrote 1 MiB within {deadline_s} s"
      time.sleep(0.001)
  finally:
    proc.kill()  # SIGKILL
    proc.wait(timeout=60)
  return _bytes_in_unfinished_saves(directory) is not None


def test_kill_during_save_leaves_the_previous_checkpoint_intact(tmp_path):
  """A process saving large checkpoints back to back is killed with SIGKILL mid-write; the
  latest complete checkpoint restores with its exact contents."""
  # A save can complete in the microseconds between the look and the kill; then the run did not
  # test a cut-off save, and a fresh one is made.
  for attempt in range(3):
    directory = tmp_path / str(attempt)
    directory.mkdir()
    if _kill_mid_save(directory):
      break
  else:
    pytest.fail("three runs in a row finished their save before the kill landed")

  ckpt = checkpoint.Checkpointer(str(directory), keep=100)
  latest = ckpt.latest_step()
  assert latest is not None and latest >= 1
  abstract = {
    "step": jax.ShapeDtypeStruct((), jnp.int32),
    "params": {"w": jax.ShapeDtypeStruct((4096, 4096), jnp.float32)},
  }
  state = ckpt.restore(abstract)
  ckpt.close()
  assert int(state["step"]) == latest
  np.testing.assert_array_equal(state["params"]["w"], _weights(latest))
