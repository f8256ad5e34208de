"""Topologies to compile for without their devices: a TPU slice ('v5e:4x4', 'v5p:4x4x4') through
the TPU runtime, an NVIDIA GPU node or several ('h100:8', 'h100:2x8') through JAX's CUDA plugin
and the device descriptions of trainer/gpu_targets.py. A name that cannot be compiled for here is
a TopologyError: one line that says which names exist and what to install."""

from __future__ import annotations

import importlib.util
import os

from core import errors
from core.errors import UserError
from trainer import gpu_targets

TPU_GENERATIONS = ("v4", "v5e", "v5p", "v6e")


class TopologyError(UserError, ValueError):
  """A topology that cannot be compiled for here (unknown, or its compiler not installed)."""


def devices(topology: str) -> tuple[str, list]:
  """(platform, devices) of a topology name: 'v5e:4x4', 'v5p:4x4x4', 'h100:8', 'h100:2x8'."""
  from jax.experimental import topologies

  generation, _, shape = topology.partition(":")
  if generation in TPU_GENERATIONS:
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server to ask
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no TPU to hold: no lock needed
    if importlib.util.find_spec("libtpu") is None:
      raise TopologyError(
        f"--compile_only={topology} needs the TPU runtime: pip install -r requirements-tpu.txt"
      )
    try:
      desc = topologies.get_topology_desc(platform="tpu", topology_name=topology)
    except Exception as e:  # noqa: BLE001 (libtpu's error types are not public)
      raise TopologyError(
        f"--compile_only={topology}: the TPU runtime does not know this topology "
        f"({errors.one_line(e)}). Use GENERATION:SHAPE, e.g. v4:2x2x2, v5e:4x4, "
        "v5p:4x4x4, v6e:8x8."
      ) from None
    return "tpu", list(desc.devices)
  if generation in gpu_targets.TARGETS:
    return "gpu", _gpu_devices(generation, shape, topology)
  raise TopologyError(
    f"--compile_only={topology}: unknown topology. TPU: {', '.join(TPU_GENERATIONS)} "
    f"with a shape (v5e:4x4, v5p:4x4x4); GPU: {', '.join(gpu_targets.TARGETS)} with "
    "GPUs per node or NODESxGPUS (h100:8, h100:2x8)."
  )


def _gpu_devices(gpu: str, shape: str, topology: str) -> list:
  """The devices of `shape` ('8': one node of 8 GPUs; '2x8': two nodes of 8) of a GPU type."""
  parts = shape.split("x")
  if not all(p.isdigit() and int(p) > 0 for p in parts) or len(parts) > 2:
    raise TopologyError(
      f"--compile_only={topology}: a GPU shape is GPUS or NODESxGPUS (h100:8, h100:2x8)."
    )
  nodes, per_node = (1, int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
  try:
    plugin = importlib.util.find_spec("jax_plugins.xla_cuda12")
  except ModuleNotFoundError:  # no jax_plugins package at all
    plugin = None
  if plugin is None:
    raise TopologyError(
      f"--compile_only={topology} needs JAX's CUDA plugin: "
      "pip install -r requirements-gpu-compile.txt"
    )
  return gpu_targets.devices(gpu, nodes, per_node)
