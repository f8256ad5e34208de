"""NVIDIA GPUs to compile for without a GPU: XLA's description of each device, from its
published specifications, and the devices of a node (or several) of them.

JAX's CUDA plugin (`pip install -r requirements-gpu-compile.txt`) builds a GPU topology from a
GpuTargetConfigProto instead of asking a driver, so the GPU compiler runs on a machine with no
GPU (`--compile_only=h100:8`). Without a device there is no autotuning: XLA takes its default
GEMM and convolution configurations, so temporaries can differ somewhat from a compile on the
GPU itself; and Triton's GEMM emitter, whose tile search needs that autotuning, is switched off
for the compile (`COMPILER_OPTIONS`: cuBLAS takes the matrix multiplications, as it does for
shapes Triton does not take on a GPU).
"""

from __future__ import annotations

# SMs, boost clock (GHz), memory (bytes, as CUDA reports it), memory bandwidth (B/s), L2 (bytes),
# shared memory per SM and the most one block may opt into (bytes), FP32 units per SM, compute
# capability. Sources: NVIDIA's H100 / H200 / A100 datasheets and CUDA's device properties.
TARGETS = {
  "h100": dict(
    name="NVIDIA H100 80GB HBM3",
    sms=132,
    ghz=1.98,
    memory=84_942_979_072,
    bandwidth=3_352_320_000_000,
    l2=50 * 2**20,
    smem_sm=228 * 1024,
    smem_block=227 * 1024,
    fpus=128,
    cc=(9, 0),
  ),
  "h200": dict(
    name="NVIDIA H200",
    sms=132,
    ghz=1.98,
    memory=143_771 * 2**20,
    bandwidth=4_800_000_000_000,
    l2=50 * 2**20,
    smem_sm=228 * 1024,
    smem_block=227 * 1024,
    fpus=128,
    cc=(9, 0),
  ),
  "a100": dict(
    name="NVIDIA A100-SXM4-80GB",
    sms=108,
    ghz=1.41,
    memory=81_920 * 2**20,
    bandwidth=2_039_000_000_000,
    l2=40 * 2**20,
    smem_sm=164 * 1024,
    smem_block=163 * 1024,
    fpus=64,
    cc=(8, 0),
  ),
}


# XLA options of a compile without a GPU: without autotuning, the Triton GEMM tile search fails
# ("Couldn't find output tile sizes") on some of a ConvNeXt's matrix multiplications.
COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def target_config(gpu: str) -> str:
  """The GpuTargetConfigProto (text format) of a GPU in TARGETS."""
  t = TARGETS[gpu]
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {t["smem_sm"]}
  threads_per_core_limit: 2048
  core_count: {t["sms"]}
  fpus_per_core: {t["fpus"]}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {t["bandwidth"]}
  l2_cache_size: {t["l2"]}
  clock_rate_ghz: {t["ghz"]}
  device_memory_size: {t["memory"]}
  shared_memory_per_block_optin: {t["smem_block"]}
  cuda_compute_capability {{ major: {t["cc"][0]} minor: {t["cc"][1]} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 patch: 0 }}
device_description_str: "{t["name"]}"
"""


def devices(gpu: str, nodes: int, per_node: int) -> list:
  """The devices of `nodes` nodes of `per_node` GPUs of a type of TARGETS (needs JAX's CUDA
  plugin; trainer/topology.py checks it is installed)."""
  from jax.experimental import topologies

  desc = topologies.get_topology_desc(
    platform="cuda", target_config=target_config(gpu), topology=f"1x{nodes}x{per_node}"
  )
  return list(desc.devices)
