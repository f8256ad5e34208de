"""core/cost.py: the FLOPs of a traced program against a hand count, and what a compiled step
reports (its FLOPs with the loops XLA counts once added back, its memory per device, the
device's peak). Small programs only: the whole file compiles two of them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from core import cost


def _program(x, w, a, b, lhs, rhs, dw_in, dw_kernel, h, m, pick):
  """Every kind of op jaxpr_flops counts (or must not count), with its FLOPs by hand."""
  y = x @ w  # (4, 16) @ (16, 32): 2 * 4 * 32 * 16 = 4,096
  y = jnp.tanh(y) + 1.0  # elementwise: none
  z = jnp.einsum("bij,bjk->bik", a, b)  # (3, 5, 7) @ (3, 7, 2): 2 * 30 * 7 = 420
  dims = ("NHWC", "HWIO", "NHWC")
  # (1, 6, 6, 3) * (3, 3, 3, 5), VALID: out (1, 4, 4, 5); 2 * 80 * 3 * 9 = 4,320
  c = jax.lax.conv_general_dilated(lhs, rhs, (1, 1), "VALID", dimension_numbers=dims)
  # depthwise, 4 groups of one channel, SAME: out (1, 6, 6, 4); 2 * 144 * 1 * 9 = 2,592
  d = jax.lax.conv_general_dilated(
    dw_in, dw_kernel, (1, 1), "SAME", dimension_numbers=dims, feature_group_count=4
  )
  # inside a nested jit: (2, 3) @ (3, 3) = 36
  e = jax.jit(lambda h, m: h @ m)(h, m)

  def body(carry, _):  # 2 * 2 * 3 * 3 = 36 a trip, 5 trips
    return jnp.sin(carry @ m), None

  s, _ = jax.lax.scan(body, h, None, length=5)
  # the dearer branch counts: 72 (two products) against 36
  k = jax.lax.cond(pick, lambda h: (h @ m) @ m, lambda h: h @ m, h)
  return y.sum() + z.sum() + c.sum() + d.sum() + e.sum() + s.sum() + k.sum()


ONCE = 4_096 + 420 + 4_320 + 2_592 + 36 + 72


def test_jaxpr_flops_counts_products_and_convolutions_by_hand():
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  args = (
    f32(4, 16),
    f32(16, 32),
    f32(3, 5, 7),
    f32(3, 7, 2),
    f32(1, 6, 6, 3),
    f32(3, 3, 3, 5),
    f32(1, 6, 6, 4),
    f32(3, 3, 1, 4),
    f32(2, 3),
    f32(3, 3),
    jax.ShapeDtypeStruct((), jnp.bool_),
  )
  jaxpr = jax.make_jaxpr(_program)(*args)
  assert cost.jaxpr_flops(jaxpr) == ONCE + 5 * 36  # the scan's body, once a trip
  assert cost.jaxpr_flops(jaxpr, count_loops=False) == ONCE + 36  # as XLA counts it


def _step(state, batch):
  """(4, 8) @ (8, 8), then three trips of a scan over the same product: 2,048 FLOPs a step."""
  h = batch @ state["w"]
  h, _ = jax.lax.scan(lambda h, _: (h @ state["w"], None), h, None, length=3)
  return {"w": state["w"] - 0.1 * jnp.mean(h)}, h.sum()


def test_a_compiled_step_reports_its_flops_and_memory_per_device():
  mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
  state = {"w": jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=NamedSharding(mesh, P()))}
  batch = jax.ShapeDtypeStruct((4, 8), jnp.float32, sharding=NamedSharding(mesh, P("data")))
  step = cost.compile_step(
    jax.jit(_step, donate_argnums=0), state, batch, global_batch=4, state=state
  )
  assert step.num_devices == 2 and step.device == jax.devices()[0]
  # XLA's count of the program (per device, the scan's body once) times the devices, plus the
  # two trips it left out: at least the products' 2,048, and what the loss adds is small.
  counted = 2 * 4 * 8 * 8 * 4
  assert step.flops_source == "xla+jaxpr"
  assert counted <= step.flops < 1.5 * counted, step.flops
  assert step.gflop_per_example == step.flops / 4 / 1e9
  # Per device: the replicated state (256 bytes) and half the batch (2 x 8 floats).
  assert step.state_bytes == 8 * 8 * 4
  assert step.argument_bytes == 8 * 8 * 4 + 2 * 8 * 4
  assert step.alias_bytes == 8 * 8 * 4  # the donated state is updated in place
  assert step.total_bytes == (
    step.argument_bytes + step.output_bytes - step.alias_bytes + step.temp_bytes
  )
  report = step.report()
  assert set(report) == {
    "compile_seconds",
    "gflop_per_example",
    "flops_source",
    "state_gib_per_device",
    "temp_gib_per_device",
    "total_gib_per_device",
    "hbm_gib_per_device",
    "fits",
  }
  assert report["compile_seconds"] >= 0 and report["flops_source"] == "xla+jaxpr"
  # A CPU has no HBM figure: nothing to fit into, no peak.
  assert report["hbm_gib_per_device"] is None and report["fits"] is None
  assert step.mfu(100.0) is None
  out, loss = step.executable(
    {"w": jnp.ones((8, 8), device=state["w"].sharding)},
    jnp.ones((4, 8), device=batch.sharding),
  )
  assert out["w"].shape == (8, 8) and np.isfinite(float(loss))


class _Device:
  """What core/cost.py reads of a device: its kind, and its memory where it reports one."""

  def __init__(self, kind, stats=None):
    self.device_kind, self._stats = kind, stats

  def memory_stats(self):
    if isinstance(self._stats, Exception):
      raise self._stats
    return self._stats


def test_device_peaks_and_memory_come_from_the_device_or_the_table():
  assert cost.device_spec(_Device("TPU v5 lite")) == (197.0, 16.0)  # v5e before v5p's "TPU v5"
  assert cost.device_spec(_Device("TPU v5")) == (459.0, 95.0)
  assert cost.device_spec(_Device("NVIDIA H100 80GB HBM3"))[0] == 989.0
  assert cost.device_spec(_Device("cpu")) == (None, None)
  assert cost.hbm_bytes(_Device("TPU v4", {"bytes_limit": 123})) == 123  # what it reports
  assert cost.hbm_bytes(_Device("TPU v4", RuntimeError("no stats"))) == 32 * cost.GIB
  assert cost.hbm_bytes(_Device("cpu", {})) is None


def test_throughput_and_mfu_of_a_step():
  gib = cost.GIB
  step = cost.StepCost(
    executable=None,
    compile_seconds=12.34,
    num_devices=4,
    global_batch=256,
    flops=256 * 2e9,  # 2 GFLOP an example
    flops_source="jaxpr",
    argument_bytes=3 * gib,
    output_bytes=3 * gib,
    alias_bytes=3 * gib,
    temp_bytes=11 * gib,
    state_bytes=3 * gib,
    device=_Device("TPU v5 lite"),
  )
  assert step.tflops_per_device(1000.0) == pytest.approx(2.0 * 1000 / 4 / 1e3)
  assert step.mfu(1000.0) == pytest.approx(0.5 / 197.0)
  assert step.total_bytes == 14 * gib and step.fits() is True  # 14 of 16 GiB: within 90%
  step.temp_bytes = 12 * gib
  assert step.fits() is False  # 15 GiB: over 90% of 16
  assert step.report() == {
    "compile_seconds": 12.3,
    "gflop_per_example": 2.0,
    "flops_source": "jaxpr",
    "state_gib_per_device": 3.0,
    "temp_gib_per_device": 12.0,
    "total_gib_per_device": 15.0,
    "hbm_gib_per_device": 16.0,
    "fits": False,
  }
