"""Checkpoints: save/restore into shardings, keep-last-N, and kill -9 during a save."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcmae import checkpoint, sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(value, size=1000):
  return {"step": jnp.asarray(value, jnp.int32),
          "params": {"w": jnp.full((size, 64), float(value)), "b": jnp.full((64,), float(value))}}


def test_save_restore_into_shardings_and_keep_last_n(tmp_path):
  mesh = sharding.make_mesh(2, 4)
  abstract = jax.eval_shape(lambda: _state(0))
  shardings = sharding.tree_shardings(abstract, mesh, min_size=1024)
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, jax.device_put(_state(step), shardings), {"step": step})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3]
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  state, meta = ckpt.restore(target)
  ckpt.close()
  assert meta == {"step": 3} and int(state["step"]) == 3
  assert state["params"]["w"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
  np.testing.assert_array_equal(state["params"]["w"], 3.0)
  params = checkpoint.restore_params(str(tmp_path))
  assert isinstance(params["w"], np.ndarray) and float(params["w"][0, 0]) == 3.0


def test_restore_params_names_a_missing_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="No train checkpoint"):
    checkpoint.restore_params(str(tmp_path))


def test_kill_during_save_leaves_the_previous_checkpoint_intact(tmp_path):
  """A process saving large checkpoints back to back is killed with SIGKILL mid-write; the
  latest complete checkpoint restores with its exact contents."""
  script = textwrap.dedent(f"""
      import sys, jax, jax.numpy as jnp
      sys.path.insert(0, {REPO!r})
      from fcmae import checkpoint
      ckpt = checkpoint.Checkpointer({str(tmp_path)!r}, keep=100)
      for step in range(1, 1000):
        state = {{"step": jnp.asarray(step), "params": {{"w": jnp.full((4096, 4096), float(step))}}}}
        ckpt.save(step, state, {{"step": step}})
        if step == 1:
          ckpt.wait()
          print("first", flush=True)
  """)
  proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.stdout.readline().strip() == "first"
  time.sleep(1.5)  # several saves of 64 MiB in flight
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  # The kill really interrupted a save: its temporary directory is still there.
  assert any("tmp" in name for name in os.listdir(tmp_path)), os.listdir(tmp_path)

  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=100)
  latest = ckpt.latest_step()
  assert latest is not None and latest >= 1
  abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32),
              "params": {"w": jax.ShapeDtypeStruct((4096, 4096), jnp.float32)}}
  state, meta = ckpt.restore(abstract)
  ckpt.close()
  assert meta == {"step": latest} and int(state["step"]) == latest
  assert float(state["params"]["w"].min()) == float(state["params"]["w"].max()) == float(latest)
