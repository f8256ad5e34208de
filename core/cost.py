"""What a compiled train step costs: FLOPs per example, memory per device, and the device's peak.

    cost = compile_step(step, *abstract_args, global_batch=B)   # step: a jax.jit function
    cost.executable(*args)                                      # the compiled step, to run
    cost.report()                                               # dict for logs and JSON

FLOPs come from XLA's cost analysis of the compiled program (per device, all ops, forward and
backward). XLA counts the body of a loop once, whatever its trip count, so a model whose stages
run under `lax.scan` would be undercounted (docs/tpu.md has Base's figures). The
missing `(length - 1)` trips of every scan are added back, their FLOPs counted from the traced
program (the jaxpr: matrix multiplications and convolutions, the ops that make up nearly all of
a ConvNeXt's FLOPs). Where a backend gives no cost analysis, or one below the jaxpr's count of
matrix multiplications and convolutions alone (XLA:GPU does not count the cuDNN and cuBLAS calls
that do a GPU step's convolutions and GEMMs), the jaxpr's count is the whole figure, and
`flops_source` says so.

Memory comes from XLA's memory analysis of the same program: the arguments (the train state and
the batch), the outputs, minus what the outputs alias (the donated state), plus the
temporaries. `hbm_gib_per_device` is the device's capacity (its own `memory_stats()` where it
reports one, else docs/reference.md's table); a run "fits" when it needs at most
`1 - HEADROOM` of it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from core import hlo_traffic

GIB = 2**30
HEADROOM = 0.10  # of HBM left free for the runtime, fragmentation and the input pipeline

# Dense bf16 peak TFLOP/s and HBM GiB per chip (docs/reference.md, section 6), by device_kind.
# First match wins, so the more specific names come first.
DEVICE_SPECS: tuple[tuple[str, float, float], ...] = (
  ("TPU v5 lite", 197.0, 16.0),  # v5e
  ("TPU v5e", 197.0, 16.0),
  ("TPU v5p", 459.0, 95.0),
  ("TPU v5", 459.0, 95.0),  # v5p reports "TPU v5"
  ("TPU v6 lite", 918.0, 32.0),  # v6e (Trillium)
  ("TPU v6e", 918.0, 32.0),
  ("TPU v4", 275.0, 32.0),
  ("H200", 989.0, 143_771 / 1024),  # MiB as CUDA reports them
  ("H100", 989.0, 84_942_979_072 / GIB),
  ("A100-SXM4-40GB", 312.0, 40_536 / 1024),
  ("A100", 312.0, 81_920 / 1024),
)


def device_spec(device) -> tuple[float | None, float | None]:
  """(peak bf16 TFLOP/s, HBM GiB) of a device; None where the kind is not in the table."""
  kind = getattr(device, "device_kind", "")
  for name, tflops, hbm in DEVICE_SPECS:
    if name.lower() in kind.lower():
      return tflops, hbm
  return None, None


def hbm_bytes(device) -> int | None:
  """The device's memory: what it reports (`memory_stats()["bytes_limit"]`), else the table."""
  try:
    stats = device.memory_stats() or {}
  except Exception:  # deviceless topologies and the CPU client have none  # noqa: BLE001
    stats = {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  hbm = device_spec(device)[1]
  return None if hbm is None else int(hbm * GIB)


# ----------------------------------------------------------------------------------------------
# FLOPs of a traced program.


def _shape(var) -> tuple[int, ...]:
  return tuple(getattr(var.aval, "shape", ()))


def _eqn_flops(eqn) -> float:
  """FLOPs of one matrix multiplication or convolution (2 per multiply-add); 0 for other ops."""
  name = eqn.primitive.name
  if name == "dot_general":
    (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
    lhs, out = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    contracted = math.prod(lhs[d] for d in lhs_contract)
    return 2.0 * math.prod(out) * contracted
  if name == "conv_general_dilated":
    rhs, out = _shape(eqn.invars[1]), _shape(eqn.outvars[0])
    spec = eqn.params["dimension_numbers"]
    in_features = rhs[spec.rhs_spec[1]]
    window = math.prod(rhs[d] for d in spec.rhs_spec[2:])
    return 2.0 * math.prod(out) * in_features * window
  return 0.0


def _subjaxprs(value):
  """The jaxprs inside an equation parameter (a jaxpr, a closed jaxpr, or a tuple of them)."""
  if hasattr(value, "eqns"):
    return [value]
  if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
    return [value.jaxpr]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _subjaxprs(v)]
  return []


def jaxpr_flops(jaxpr, *, count_loops: bool = True) -> float:
  """FLOPs of the matrix multiplications and convolutions of a jaxpr, nested ones included.

  count_loops: a scan's body counts `length` times (what runs); False counts it once (what XLA's
  cost analysis counts). Of the branches of a `cond`, the most expensive counts."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    total += _eqn_flops(eqn)
    inner = [
      jaxpr_flops(j, count_loops=count_loops) for v in eqn.params.values() for j in _subjaxprs(v)
    ]
    if not inner:
      continue
    if eqn.primitive.name == "cond":
      total += max(inner)
    elif eqn.primitive.name == "scan" and count_loops:
      total += eqn.params["length"] * sum(inner)
    else:
      total += sum(inner)
  return total


# ----------------------------------------------------------------------------------------------
# A compiled step and its cost.


@dataclasses.dataclass
class StepCost:
  """A compiled train step with what XLA says it costs. Byte counts are per device."""

  executable: Callable
  compile_seconds: float
  num_devices: int
  global_batch: int
  flops: float  # global, per step
  flops_source: str  # "xla+jaxpr" (XLA's count, loops added back) or "jaxpr"
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  state_bytes: int
  device: Any

  @property
  def total_bytes(self) -> int:
    """Peak memory per device: arguments + outputs - aliased (donated) + temporaries."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  @property
  def gflop_per_example(self) -> float:
    return self.flops / self.global_batch / 1e9

  def hbm_bytes(self) -> int | None:
    return hbm_bytes(self.device)

  def fits(self) -> bool | None:
    hbm = self.hbm_bytes()
    return None if hbm is None else self.total_bytes <= (1 - HEADROOM) * hbm

  def report(self) -> dict:
    """The figures as a flat dict (GiB per device, GFLOP per example of the global batch)."""
    hbm = self.hbm_bytes()
    return {
      "compile_seconds": round(self.compile_seconds, 1),
      "gflop_per_example": round(self.gflop_per_example, 2),
      "flops_source": self.flops_source,
      "state_gib_per_device": round(self.state_bytes / GIB, 3),
      "temp_gib_per_device": round(self.temp_bytes / GIB, 3),
      "total_gib_per_device": round(self.total_bytes / GIB, 3),
      "hbm_gib_per_device": None if hbm is None else round(hbm / GIB, 2),
      "fits": self.fits(),
    }

  def traffic_report(self, blocks: int = 0) -> dict:
    """Bytes the step moves to and from device memory per example, its kernels and its roofline
    (core/hlo_traffic.py), counted from the compiled program; `blocks` gives kernels per block."""
    traffic = hlo_traffic.measure(self.executable)
    return hlo_traffic.report(
      traffic,
      self.global_batch / self.num_devices,
      self.flops / self.num_devices,
      tflops=device_spec(self.device)[0],
      bandwidth=hlo_traffic.bandwidth(self.device),
      blocks=blocks,
    )

  def tflops_per_device(self, examples_per_second: float) -> float:
    return self.gflop_per_example * examples_per_second / self.num_devices / 1e3

  def mfu(self, examples_per_second: float) -> float | None:
    """Achieved over peak bf16 FLOP/s of the device (None where the peak is unknown)."""
    peak = device_spec(self.device)[0]
    return None if peak is None else self.tflops_per_device(examples_per_second) / peak


def _bytes_per_device(abstract_tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (its largest shard)."""
  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) else leaf.shape
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


def compile_step(
  step, *abstract_args, global_batch: int, state=None, compiler_options: dict | None = None
) -> StepCost:
  """Traces, lowers and compiles a jitted step for abstract (sharded) arguments.

  state: the part of the arguments that is the train state, for `state_gib_per_device`.
  compiler_options: XLA options for this compile (e.g. gpu_targets.COMPILER_OPTIONS)."""
  start = time.perf_counter()
  traced = step.trace(*abstract_args)
  compiled = traced.lower().compile(compiler_options=compiler_options)
  seconds = time.perf_counter() - start

  memory = compiled.memory_analysis()
  shardings = [
    leaf.sharding
    for leaf in jax.tree.leaves(abstract_args)
    if getattr(leaf, "sharding", None) is not None
  ]
  devices = sorted(shardings[0].device_set, key=lambda d: d.id) if shardings else jax.devices()[:1]
  device, num_devices = devices[0], len(devices)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  counted = jaxpr_flops(traced.jaxpr)
  loops_added = counted - jaxpr_flops(traced.jaxpr, count_loops=False)
  xla = (
    float(cost["flops"]) * num_devices + loops_added if cost and cost.get("flops", -1) >= 0 else -1
  )
  if xla >= counted:
    flops, source = xla, "xla+jaxpr"
  else:  # no analysis, or one that misses library calls (cuDNN convolutions, cuBLAS GEMMs on GPU)
    flops, source = counted, "jaxpr"
  return StepCost(
    executable=compiled,
    compile_seconds=seconds,
    num_devices=num_devices,
    global_batch=global_batch,
    flops=flops,
    flops_source=source,
    argument_bytes=int(memory.argument_size_in_bytes),
    output_bytes=int(memory.output_size_in_bytes),
    alias_bytes=int(memory.alias_size_in_bytes),
    temp_bytes=int(memory.temp_size_in_bytes),
    state_bytes=_bytes_per_device(state) if state is not None else 0,
    device=device,
  )
