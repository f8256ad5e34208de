"""Memory traffic of a compiled step, counted from its optimized HLO: bytes moved and kernels.

    traffic = measure(compiled)               # compiled: a jax.stages.Compiled
    traffic.bytes, traffic.kernels            # per step, on one device
    traffic.roofline_seconds(flops, tflops=989, bandwidth=3.35e12)
    launches = kernels(compiled.as_text())   # where the bytes go: each kernel, most bytes first,
    by_source(launches)                      # and summed by the line of our code it came from

A step whose matrix math is small next to its elementwise work (a ConvNeXt: depthwise
convolutions, LayerNorms, GELU, GRN) is bound by the bytes its kernels read and write to HBM. That
figure can be counted without the device, from the program the device's compiler builds (a GPU
program compiled here with `--compile_only=h100:1`):

- `xla_bytes`: XLA's cost analysis 'bytes accessed' of the optimized module (its fusions and other
  XLA ops: each operand read once and each result written once, a fused parameter only as far as
  the fusion reads it). XLA counts the body of a loop once, and it leaves out custom calls: on a
  GPU the cuBLAS GEMMs and cuDNN convolutions that do nearly all of a step's FLOPs.
- `library_bytes`: the operands and results of those custom calls (not their scratch workspace),
  counted here from the HLO text, every trip of every loop.
- `loop_bytes`: the trips of loop bodies XLA's count leaves out, counted as the operands and
  results of the bodies' kernels.

`kernels` counts the launches of one step: fusions and custom calls (each loop trip again). Other
ops that launch work outside fusions (copies, sorts) are few after XLA's fusion passes; `others`
counts them, and their bytes are in XLA's figure.
"""

from __future__ import annotations

import dataclasses
import re

# Bytes per element by HLO element type (sub-byte types as fractions).
_ELEMENT_BYTES = {
  "pred": 1,
  "s2": 0.25,
  "u2": 0.25,
  "s4": 0.5,
  "u4": 0.5,
  "s8": 1,
  "u8": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
  "c64": 8,
  "c128": 16,
  "token": 0,
}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%(\S+) \(.*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = ")
# Ops that launch nothing: views, tuples, values known to the host, and control flow (whose
# bodies are walked).
_FREE = {
  "parameter",
  "constant",
  "get-tuple-element",
  "tuple",
  "bitcast",
  "after-all",
  "partition-id",
  "replica-id",
  "while",
  "conditional",
  "call",
  "opt-barrier",
}
# Custom calls whose last result is scratch memory, not data (cuBLAS's workspace, cuDNN's).
_SCRATCH_TARGETS = ("__cublas", "__cudnn")


def array_bytes(type_text: str) -> float:
  """Bytes of every array in an HLO type: 'bf16[2,3]{1,0}' or a tuple '(f32[4], s8[16])'."""
  total = 0.0
  for element, dims in _ARRAY.findall(type_text):
    if element not in _ELEMENT_BYTES:
      continue
    count = 1
    for d in filter(None, dims.split(",")):
      count *= int(d)
    total += count * _ELEMENT_BYTES[element]
  return total


@dataclasses.dataclass
class _Op:
  name: str
  type_text: str
  opcode: str
  operands: list[str]
  attributes: str


def _closing(text: str, start: int) -> int:
  """Index just past the parenthesis that closes the one at text[start]."""
  depth = 0
  for i in range(start, len(text)):
    if text[i] == "(":
      depth += 1
    elif text[i] == ")":
      depth -= 1
      if depth == 0:
        return i + 1
  raise ValueError(f"Unbalanced parentheses in HLO line: {text[:200]}")


def _parse_op(line: str) -> _Op | None:
  found = _INSTRUCTION.match(line)
  if not found:
    return None
  rest = line[found.end() :]
  if rest.startswith("("):
    end = _closing(rest, 0)
    type_text, rest = rest[:end], rest[end + 1 :]
  else:
    type_text, _, rest = rest.partition(" ")
  paren = rest.index("(")
  opcode = rest[:paren]
  end = _closing(rest, paren)
  operands = re.findall(r"%([^\s,()]+)", rest[paren:end])
  return _Op(found.group(1), type_text, opcode, operands, rest[end:])


def parse_module(text: str) -> tuple[dict[str, list[_Op]], str]:
  """({computation name: its ops in order}, the entry computation's name) of an HLO module."""
  computations: dict[str, list[_Op]] = {}
  entry, current = "", None
  for line in text.splitlines():
    if current is None:
      header = _HEADER.match(line)
      if header:
        current = computations.setdefault(header.group(2), [])
        if header.group(1):
          entry = header.group(2)
      continue
    if line.startswith("}"):
      current = None
      continue
    op = _parse_op(line)
    if op is not None:
      current.append(op)
  if not entry:
    raise ValueError("No ENTRY computation in the HLO text.")
  return computations, entry


def _attribute(attributes: str, key: str) -> str | None:
  found = re.search(rf"\b{key}=%?([^\s,}}]+)", attributes)
  return found.group(1) if found else None


def _trip_count(attributes: str) -> int:
  found = re.search(r'"known_trip_count":\{"n":"(\d+)"', attributes)
  if not found:
    raise ValueError("A while loop without a known trip count: its traffic cannot be counted.")
  return int(found.group(1))


@dataclasses.dataclass
class Traffic:
  """What one step of a compiled program moves to and from device memory, per device."""

  xla_bytes: float
  library_bytes: float
  loop_bytes: float
  fusions: int
  custom_calls: int
  others: int
  library_targets: dict[str, int]  # custom call target -> launches per step

  @property
  def bytes(self) -> float:
    return self.xla_bytes + self.library_bytes + self.loop_bytes

  @property
  def kernels(self) -> int:
    return self.fusions + self.custom_calls

  def roofline_seconds(self, flops: float, *, tflops: float, bandwidth: float) -> float:
    """The step's least time on a device of `tflops` peak and `bandwidth` B/s: its bytes at full
    bandwidth or its FLOPs (per device) at peak, whichever takes longer."""
    return max(self.bytes / bandwidth, flops / (tflops * 1e12))


@dataclasses.dataclass
class Launch:
  """One kernel of a step (a fusion, a library call or another launching op), every trip counted."""

  name: str  # the HLO instruction
  kind: str  # "fusion", the custom call's target, or the HLO opcode
  bytes: float  # operands + results, times launches (XLA's own figure can be lower: see kernels)
  launches: int
  op_name: str  # JAX's name for it ("jit(step)/transpose(jvp())/mul": a backward op)
  source: str  # the innermost frame of the program's own code, "models/layers.py:313 gelu"

  @property
  def backward(self) -> bool:
    return "transpose(" in self.op_name


def _launches(computations: dict[str, list[_Op]], entry: str):
  """(op, launches, bytes of its operands and results per launch, kind) of every launching op."""

  def walk(name: str, trips: int):
    shapes: dict[str, str] = {}
    for op in computations[name]:
      shapes[op.name] = op.type_text
      if op.opcode == "while":
        n = _trip_count(op.attributes)
        yield from walk(_attribute(op.attributes, "body"), trips * n)
        yield from walk(_attribute(op.attributes, "condition"), trips * (n + 1))
        continue
      if op.opcode == "conditional":
        branches = re.search(r"branch_computations=\{([^}]*)\}", op.attributes)
        names = re.findall(r"%([^\s,]+)", branches.group(1)) if branches else []
        names += [_attribute(op.attributes, k) for k in ("true_computation", "false_computation")]
        for branch in filter(None, names):
          yield from walk(branch, trips)  # every branch counted: an upper bound
        continue
      if op.opcode == "call":
        yield from walk(_attribute(op.attributes, "to_apply"), trips)
        continue
      if op.opcode in _FREE or op.opcode.endswith("-done"):
        continue
      result, kind = op.type_text, op.opcode
      if op.opcode == "custom-call":
        kind = (_attribute(op.attributes, "custom_call_target") or "").strip('"')
        if op.type_text.startswith("(") and kind.startswith(_SCRATCH_TARGETS):
          result = op.type_text[: op.type_text.rfind(",")]  # drop the scratch buffer
      moved = sum(array_bytes(shapes.get(o, "")) for o in op.operands) + array_bytes(result)
      yield op, trips, moved, kind

  yield from walk(entry, 1)


def count(text: str, xla_bytes: float) -> Traffic:
  """Traffic of an optimized HLO module (its text) given XLA's 'bytes accessed' for it."""
  computations, entry = parse_module(text)
  library = loops = 0.0
  fusions = custom_calls = others = 0
  targets: dict[str, int] = {}
  for op, trips, moved, kind in _launches(computations, entry):
    if op.opcode == "custom-call":
      library += trips * moved
      custom_calls += trips
      targets[kind] = targets.get(kind, 0) + trips
      continue
    loops += (trips - 1) * moved  # XLA counted one trip
    if op.opcode == "fusion":
      fusions += trips
    else:
      others += trips
  return Traffic(xla_bytes, library, loops, fusions, custom_calls, others, targets)


def kernels(text: str) -> list[Launch]:
  """Every kernel of an optimized HLO module, most bytes first, with the JAX op and the line of
  the program's own code it came from (from the module's stack frame tables; a backward op
  carries its forward op's line). Bytes are operands + results: a fusion that reads only part of
  an operand (a slice) is counted whole here, where XLA's cost analysis counts what it reads."""
  computations, entry = parse_module(text)
  frames = _SourceFrames(text)
  out = []
  for op, trips, moved, kind in _launches(computations, entry):
    op_name = re.search(r'op_name="([^"]*)"', op.attributes)
    frame = re.search(r"stack_frame_id=(\d+)", op.attributes)
    out.append(
      Launch(
        op.name,
        kind,
        trips * moved,
        trips,
        op_name.group(1) if op_name else "",
        frames.source(int(frame.group(1))) if frame else "",
      )
    )
  return sorted(out, key=lambda k: -k.bytes)


def by_source(launches: list[Launch]) -> list[tuple[str, float, int]]:
  """(source line, with ' (backward)' for backward ops, bytes, launches), most bytes first."""
  totals: dict[str, list] = {}
  for k in launches:
    key = (k.source or k.op_name or k.name) + (" (backward)" if k.backward else "")
    total = totals.setdefault(key, [0.0, 0])
    total[0] += k.bytes
    total[1] += k.launches
  return sorted(((s, b, n) for s, (b, n) in totals.items()), key=lambda t: -t[1])


class _SourceFrames:
  """The stack frame tables that JAX writes into an HLO module (FileNames, FunctionNames,
  FileLocations, StackFrames): a frame id to the innermost frame outside installed packages."""

  def __init__(self, text: str):
    def table(name):
      found = re.search(rf"^{name}\n(.*?)(?:\n\n|\Z)", text, re.S | re.M)
      rows = found.group(1).splitlines() if found else []
      return dict((int(i), rest) for i, _, rest in (r.partition(" ") for r in rows))

    self.files, self.functions = table("FileNames"), table("FunctionNames")
    self.locations, self.frames = table("FileLocations"), table("StackFrames")

  def _field(self, row: str, key: str) -> int:
    return int(re.search(rf"\b{key}=(\d+)", row).group(1))

  def source(self, frame: int) -> str:
    seen = set()
    while frame in self.frames and frame not in seen:
      seen.add(frame)
      row = self.frames[frame]
      location = self.locations.get(self._field(row, "file_location_id"), "")
      path = self.files.get(self._field(location, "file_name_id"), "").strip('"')
      if path and "-packages/" not in path:
        function = self.functions.get(self._field(location, "function_name_id"), "").strip('"')
        line = self._field(location, "line")
        return f"{_relative(path)}:{line} {function}"
      # Printed ids are 1-based and a parent is printed one above its id (0: the outermost).
      frame = self._field(row, "parent_frame_id") - 1
    return ""


def _relative(path: str) -> str:
  """A source path from the repository root where it lies inside it."""
  import os

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.path.relpath(path, root) if path.startswith(root + os.sep) else path


def xla_bytes_accessed(compiled) -> float:
  """XLA's cost analysis 'bytes accessed' of a compiled program's optimized module, computed by
  the host's XLA (deviceless GPU compiles give no cost analysis of their own)."""
  import jax
  from jax._src.lib import xla_client

  module = compiled.runtime_executable().hlo_modules()[0]
  host = jax.devices("cpu")[0].client
  analysis = xla_client._xla.hlo_module_cost_analysis(host, module)
  return max(float(analysis.get("bytes accessed", 0.0)), 0.0)


def measure(compiled) -> Traffic:
  """Traffic of one step of a compiled program (a jax.stages.Compiled), per device."""
  return count(compiled.as_text(), xla_bytes_accessed(compiled))


# HBM bandwidth (B/s) by device_kind, from NVIDIA's datasheets (SXM parts); first match wins.
BANDWIDTH: tuple[tuple[str, float], ...] = (
  ("H200", 4.8e12),
  ("H100", 3.35e12),
  ("A100", 2.039e12),
)


def bandwidth(device) -> float | None:
  """HBM bytes per second of a device; None where its kind is not in BANDWIDTH."""
  kind = getattr(device, "device_kind", "").lower()
  return next((b for name, b in BANDWIDTH if name.lower() in kind), None)


def report(
  traffic: Traffic,
  examples_per_device: float,
  flops_per_device: float,
  *,
  tflops: float | None,
  bandwidth: float | None,
  blocks: int = 0,
) -> dict:
  """The figures for logs and JSON: MB per example (10^6 bytes), kernels, and, where the device's
  peak and bandwidth are known, the roofline: the step's least time and the images/s it allows.
  blocks: the network's blocks, for kernels per block (0: not reported)."""
  per_example = lambda b: round(b / examples_per_device / 1e6, 2)
  out = {
    "hbm_mb_per_example": per_example(traffic.bytes),
    "xla_mb_per_example": per_example(traffic.xla_bytes + traffic.loop_bytes),
    "library_mb_per_example": per_example(traffic.library_bytes),
    "kernels": traffic.kernels,
    "custom_calls": traffic.custom_calls,
    "library_calls": dict(sorted(traffic.library_targets.items())),
  }
  if blocks:
    out["kernels_per_block"] = round(traffic.kernels / blocks, 1)
  if tflops and bandwidth:
    seconds = traffic.roofline_seconds(flops_per_device, tflops=tflops, bandwidth=bandwidth)
    out["roofline_memory_ms"] = round(1e3 * traffic.bytes / bandwidth, 2)
    out["roofline_flops_ms"] = round(1e3 * flops_per_device / (tflops * 1e12), 2)
    out["roofline_images_per_sec"] = round(examples_per_device / seconds, 1)
  return out
