"""core/hlo_traffic.py: bytes moved and kernels launched, checked against counts made by hand for
a matrix multiplication followed by an elementwise op: compiled for this CPU, written out as the
H100 compiler writes it (a cuBLAS call inside a loop), and compiled for an H100 where JAX's CUDA
plugin is installed."""

import importlib.util

import jax
import jax.numpy as jnp
import pytest

from core import hlo_traffic

M, K, N = 256, 512, 1024


def _exp_of_matmul(x, w):
  return jnp.exp(x @ w)


def test_cpu_matmul_then_exp_moves_its_operands_and_results_once():
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  compiled = jax.jit(_exp_of_matmul).lower(spec(M, K), spec(K, N)).compile()
  traffic = hlo_traffic.measure(compiled)
  # The matmul reads x and w and writes its (M, N) result; exp reads that and writes its own.
  by_hand = 4 * (M * K + K * N + M * N) + 4 * (2 * M * N)
  assert traffic.bytes == by_hand
  assert (traffic.kernels, traffic.custom_calls, traffic.library_bytes) == (2, 0, 0)


# The H100 compiler's program for a 3-trip loop of x = exp(x @ w), x (256, 512), w (512, 512) in
# bfloat16, as JAX's CUDA plugin prints it (metadata trimmed): the GEMM is a cuBLAS custom call
# with a 4 MiB workspace, which XLA's cost analysis does not count, and the loop body runs 3 times,
# which XLA's cost analysis counts once.
H100_LOOP = """HloModule jit_f, is_scheduled=true

%fused_add (param_0: s32[]) -> s32[] {
  %param_0 = s32[] parameter(0)
  %constant_2_1 = s32[] constant(1)
  ROOT %add.1.1 = s32[] add(%param_0, %constant_2_1)
}

%wrapped_exponential_computation (param_0.2: bf16[256,512]) -> bf16[256,512] {
  %param_0.2 = bf16[256,512]{1,0} parameter(0)
  ROOT %exp.0.1 = bf16[256,512]{1,0} exponential(%param_0.2)
}

%region_0.2 (arg_tuple.1: (s32[], bf16[256,512], bf16[512,512])) -> (s32[], bf16[256,512], bf16[512,512]) {
  %arg_tuple.1 = (s32[], bf16[256,512]{1,0}, bf16[512,512]{1,0}) parameter(0)
  %get-tuple-element.8 = s32[] get-tuple-element(%arg_tuple.1), index=0
  %loop_add_fusion = s32[] fusion(%get-tuple-element.8), kind=kLoop, calls=%fused_add
  %get-tuple-element.16 = bf16[512,512]{1,0} get-tuple-element(%arg_tuple.1), index=2
  %get-tuple-element.12 = bf16[256,512]{1,0} get-tuple-element(%arg_tuple.1), index=1
  %custom-call.1 = (bf16[256,512]{1,0}, s8[4194304]{0}) custom-call(%get-tuple-element.12, %get-tuple-element.16), custom_call_target="__cublas$lt$matmul", backend_config={"gemm_backend_config":{"epilogue":"DEFAULT"}}
  %get-tuple-element.1 = bf16[256,512]{1,0} get-tuple-element(%custom-call.1), index=0
  %wrapped_exponential = bf16[256,512]{1,0} fusion(%get-tuple-element.1), kind=kLoop, calls=%wrapped_exponential_computation, control-predecessors={%custom-call.1}
  ROOT %tuple.3 = (s32[], bf16[256,512]{1,0}, bf16[512,512]{1,0}) tuple(%loop_add_fusion, %wrapped_exponential, %get-tuple-element.16)
}

%fused_compare (param_0.1: s32[]) -> pred[] {
  %param_0.1 = s32[] parameter(0)
  %constant_4_1 = s32[] constant(3)
  ROOT %lt.1.1 = pred[] compare(%param_0.1, %constant_4_1), direction=LT
}

%region_1.3 (arg_tuple.3: (s32[], bf16[256,512], bf16[512,512])) -> pred[] {
  %arg_tuple.3 = (s32[], bf16[256,512]{1,0}, bf16[512,512]{1,0}) parameter(0)
  %get-tuple-element.9.0 = s32[] get-tuple-element(%arg_tuple.3), index=0
  ROOT %loop_compare_fusion = pred[] fusion(%get-tuple-element.9.0), kind=kLoop, calls=%fused_compare
}

ENTRY %main.4 (x.1: bf16[256,512], w.1: bf16[512,512]) -> bf16[256,512] {
  %constant_5_0 = s32[] constant(0)
  %copy.9 = s32[] copy(%constant_5_0)
  %w.1 = bf16[512,512]{1,0} parameter(1), sharding={replicated}
  %x.1 = bf16[256,512]{1,0} parameter(0), sharding={replicated}
  %copy.8 = bf16[256,512]{1,0} copy(%x.1)
  %tuple = (s32[], bf16[256,512]{1,0}, bf16[512,512]{1,0}) tuple(%copy.9, %copy.8, %w.1)
  %while.5 = (s32[], bf16[256,512]{1,0}, bf16[512,512]{1,0}) while(%tuple), condition=%region_1.3, body=%region_0.2, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %while.7.0 = bf16[256,512]{1,0} get-tuple-element(%while.5), index=1
}
"""


def test_h100_loop_counts_cublas_operands_and_every_trip():
  xla_once = 1_000_000.0  # whatever XLA's analysis said: carried through as it is
  traffic = hlo_traffic.count(H100_LOOP, xla_once)
  x, w = 2 * 256 * 512, 2 * 512 * 512
  assert traffic.library_bytes == 3 * (x + w + x)  # reads x and w, writes x; not the workspace
  assert traffic.library_targets == {"__cublas$lt$matmul": 3}
  # Two more trips of the body than XLA counts (exp reads and writes x, the counter 4 bytes each
  # way) and three more of the condition (reads the counter, writes a 1-byte predicate).
  assert traffic.loop_bytes == 2 * (2 * x + 8) + 3 * (4 + 1)
  assert traffic.bytes == xla_once + traffic.library_bytes + traffic.loop_bytes
  # Per trip: the GEMM, exp, the counter; and the condition, once more than the trips.
  assert (traffic.custom_calls, traffic.fusions, traffic.others) == (3, 3 + 3 + 4, 2)
  seconds = traffic.roofline_seconds(3 * 2 * 256 * 512 * 512, tflops=989, bandwidth=3.35e12)
  assert seconds == pytest.approx(traffic.bytes / 3.35e12)  # memory-bound


# The same module with the metadata the compiler writes: JAX's op names, and stack frames in the
# tables that follow the computations (file 1 is the program's own code, file 2 a package).
H100_LOOP_WITH_FRAMES = (
  H100_LOOP.replace(
    'custom_call_target="__cublas$lt$matmul",',
    'custom_call_target="__cublas$lt$matmul", '
    'metadata={op_name="jit(f)/transpose(jvp())/dot_general" stack_frame_id=2},',
  ).replace(
    "calls=%wrapped_exponential_computation,",
    'calls=%wrapped_exponential_computation, metadata={op_name="jit(f)/exp" stack_frame_id=3},',
  )
  + """
FileNames
1 "/home/me/repo/models/layers.py"
2 "/venv/lib/python3.11/site-packages/jax/numpy.py"

FunctionNames
1 "matmul"
2 "dot"
3 "gelu"

FileLocations
1 {file_name_id=1 function_name_id=1 line=68 end_line=68 column=2 end_column=9}
2 {file_name_id=2 function_name_id=2 line=900 end_line=900 column=2 end_column=9}
3 {file_name_id=1 function_name_id=3 line=313 end_line=313 column=2 end_column=9}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=2}
3 {file_location_id=3 parent_frame_id=1}
"""
)


def test_kernels_lists_each_launch_with_its_bytes_and_source_line():
  launches = hlo_traffic.kernels(H100_LOOP_WITH_FRAMES)
  x, w = 2 * 256 * 512, 2 * 512 * 512
  by_name = {k.name: k for k in launches}
  gemm, exp = by_name["custom-call.1"], by_name["wrapped_exponential"]
  assert (gemm.kind, gemm.launches, gemm.bytes) == ("__cublas$lt$matmul", 3, 3 * (x + w + x))
  assert (exp.kind, exp.launches, exp.bytes) == ("fusion", 3, 3 * 2 * x)
  # Frame 2 lies in an installed package: its parent (printed one above its id) is our line 68.
  assert gemm.source == "/home/me/repo/models/layers.py:68 matmul" and gemm.backward
  assert exp.source == "/home/me/repo/models/layers.py:313 gelu" and not exp.backward
  assert launches[0] is gemm  # most bytes first
  # Every launch that `count` counts: kernels and the two copies outside the loop.
  traffic = hlo_traffic.count(H100_LOOP, 0)
  assert sum(k.launches for k in launches) == traffic.kernels + traffic.others
  by_line = dict((s, (b, n)) for s, b, n in hlo_traffic.by_source(launches))
  assert by_line["/home/me/repo/models/layers.py:68 matmul (backward)"] == (gemm.bytes, 3)


def _cuda_plugin() -> bool:
  try:
    return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
  except ModuleNotFoundError:
    return False


@pytest.mark.skipif(
  not _cuda_plugin(), reason="needs JAX's CUDA plugin: pip install -r requirements-gpu-compile.txt"
)
def test_h100_compile_adds_the_cublas_gemm_that_xla_leaves_out():
  from jax.sharding import SingleDeviceSharding

  from trainer import gpu_targets

  device = gpu_targets.devices("h100", 1, 1)[0]
  spec = lambda *shape: jax.ShapeDtypeStruct(
    shape, jnp.bfloat16, sharding=SingleDeviceSharding(device)
  )
  compiled = (
    jax.jit(_exp_of_matmul)
    .trace(spec(M, K), spec(K, N))
    .lower()
    .compile(compiler_options=gpu_targets.COMPILER_OPTIONS)
  )
  traffic = hlo_traffic.measure(compiled)
  assert traffic.library_targets == {"__cublas$lt$matmul": 1}
  assert traffic.library_bytes == 2 * (M * K + K * N + M * N)
  # XLA's count holds exp alone (reads and writes (M, N)); it marks the GEMM unknown (-1).
  assert traffic.xla_bytes == pytest.approx(2 * 2 * M * N, abs=1)
  assert traffic.kernels == 2
