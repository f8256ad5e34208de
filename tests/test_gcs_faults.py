"""gs:// under a bucket that fails: the emulator behind tests/gcs_emulator.py's FaultProxy, which
answers one request in a few with 503 or 429 or drops the connection after doing it. The client
libraries' own retries (gcsfs for logs and metadata, tensorstore for the checkpoints' arrays)
must ride them out with nothing lost and nothing done twice; a permanent 403 on writes must
leave the checkpoint saved before it intact."""

import fsspec
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import schema
from core import logs, storage
from tests.gcs_emulator import FaultProxy, QuickAsyncio
from trainer import checkpoint


@pytest.fixture
def faulty(gcs, monkeypatch):
  """STORAGE_EMULATOR_HOST (gcsfs) and TENSORSTORE_GCS_HTTP_URL pointed at a FaultProxy; gcsfs's
  waits before a retry (1-2 s, doubling, fixed in its code) cut to 10 ms."""
  import gcsfs.retry  # not before the gcs fixture: gcsfs reads its environment on import

  proxy = FaultProxy(gcs.host, every=5)
  monkeypatch.setattr(gcsfs.retry, "asyncio", QuickAsyncio())
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
  monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", proxy.url)
  fsspec.get_filesystem_class("gs").clear_instance_cache()  # a gcsfs client for the proxy
  yield proxy
  proxy.close()
  monkeypatch.undo()
  fsspec.get_filesystem_class("gs").clear_instance_cache()


def test_metrics_and_events_under_transient_errors_hold_every_row_once(gcs, faulty, capsys):
  workdir = gcs.url("faults")
  storage.retries_since_last()  # counted from here
  writer = logs.MetricWriter(workdir, 4, enabled=True)
  for step in range(1, 5):
    writer.write(step, {"loss": 1.0 / step})
  writer.close()
  assert all(faulty.faults[k] for k in FaultProxy.KINDS), faulty.faults
  said = [line for line in capsys.readouterr().out.splitlines() if "retried" in line]
  assert said and all("request(s) retried since the last row" in line for line in said)
  text = " ".join(said)
  assert "503" in text and "429" in text and "disconnected" in text, text
  faulty.every = 0  # read back without faults
  rows = logs.read_metrics(workdir)
  assert [(r["step"], r["loss"]) for r in rows] == [(s, 1.0 / s) for s in range(1, 5)]
  assert not [n for n in storage.listdir(workdir) if n.startswith(".append-")]


def _state():
  rng = np.random.default_rng(0)
  return {
    "params": {"w": jnp.asarray(rng.standard_normal((64, 32), np.float32))},
    "step": jnp.asarray(3, jnp.int32),
  }


def test_a_checkpoint_saved_under_transient_errors_restores_exactly(gcs, faulty):
  """One request in three refused, gcsfs's (orbax's metadata) and tensorstore's (the arrays):
  tensorstore's retried as storage.set_retries says (the config's storage.* fields; 10 ms
  here, not its default 1 s) and counted in the retries line."""
  faulty.every = 3
  directory = f"{gcs.url('faults')}/checkpoints"
  state = _state()
  storage.set_retries(32, 0.01, 0.1)
  try:
    storage.retries_since_last()  # counted from here
    ckpt = checkpoint.Checkpointer(directory, async_save=False)
    ckpt.save(3, state)
    ckpt.wait()
    ckpt.close()
    said = storage.retries_since_last()
    ckpt = checkpoint.Checkpointer(directory, async_save=False)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    restored = ckpt.restore(abstract, 3)
    ckpt.close()
  finally:
    default = schema.defaults("pretrain", "atto").storage  # tensorstore's own, the config's
    storage.set_retries(default.retries, default.retry_delay, default.retry_max_delay)
  assert all(faulty.faults[k] for k in FaultProxy.KINDS), faulty.faults
  assert "checkpoint arrays (tensorstore) x" in said, said
  assert np.array_equal(restored["params"]["w"], state["params"]["w"])
  assert int(restored["step"]) == 3


def test_a_permanent_403_on_writes_fails_and_leaves_the_saved_checkpoint_intact(gcs, faulty):
  faulty.every = 0
  directory = f"{gcs.url('faults')}/checkpoints"
  state = _state()
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  ckpt.save(3, state)
  ckpt.wait()
  faulty.refuse_writes = True
  newer = jax.tree.map(lambda a: a + 1, state)
  with pytest.raises(storage.StorageError) as failure:
    ckpt.save(4, newer)
    ckpt.wait()
  line = str(failure.value)
  assert "\n" not in line and "saving checkpoint 4" in line and "permission denied" in line, line
  faulty.refuse_writes = False
  ckpt.close()
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  assert ckpt.latest_step() == 3
  restored = ckpt.restore(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state), 3)
  ckpt.close()
  assert np.array_equal(restored["params"]["w"], state["params"]["w"])


def test_a_403_on_a_log_or_a_file_is_one_storage_error(gcs, faulty):
  faulty.every = 0
  workdir = gcs.url("faults")
  log = storage.Log(f"{workdir}/metrics.jsonl")
  log.write("kept\n")
  faulty.refuse_writes = True
  for write in (lambda: log.write("refused\n"), lambda: storage.write_text(f"{workdir}/x", "y")):
    with pytest.raises(storage.StorageError, match="permission denied") as failure:
      write()
    assert "\n" not in str(failure.value)
  faulty.refuse_writes = False
  assert storage.read_text(f"{workdir}/metrics.jsonl") == "kept\n"
