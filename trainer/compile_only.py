"""`--compile_only=TOPOLOGY`: build a run for a TPU slice or a GPU node and compile it here.

    python train.py --config configs/fcmae_huge.py --compile_only=v5p:4x4x4
    python finetune.py --config configs/finetune_base.py --compile_only=v5e:8x8
    python train.py --config configs/fcmae_base.py --compile_only=h100:8      # one 8-GPU node

The run is built exactly as a real run builds it (the config with its overrides, the mesh over
the topology's devices, the sharded train state, the jitted train step with donation, and for
finetuning the evaluation step) and compiled by the target's own compiler on this machine, with
no accelerator: the TPU runtime (`pip install -r requirements-tpu.txt`) compiles for any TPU
slice, JAX's CUDA plugin (`pip install -r requirements-gpu-compile.txt`) for NVIDIA GPUs from a
description of the device (`trainer/gpu_targets.py`). Nothing is read and nothing is written:
the dataset is taken to be ImageNet-1K (1000 classes unless `--config.data.num_classes` says
otherwise).

It prints a readable report and, as the last line of stdout, one JSON object; it exits 1 when the
run does not fit the device's memory (with 10% headroom), saying by how much and what to change.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable

from core import cost as cost_lib
from core import errors
from data import info as data_info
from models import layers
from trainer import gpu_targets, loop
from trainer import topology as topology_lib


def _out_of_memory(error: Exception) -> str | None:
  """The compiler's own words when a program does not fit, else None."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
    return None
  for pattern in (
    r"Used [\d.]+[KMGT]? of [\d.]+[KMGT]? \S+\.( Exceeded [^.]+\.)?",
    r"total memory required for [^(]*\([\d.]+[KMGT]\) exceeds available \S+ \([\d.]+[KMGT]\)",
  ):
    found = re.search(pattern, text)
    if found:
      return found.group(0)
  return errors.one_line(error)


def compile_and_report(config, make_task: Callable, topology: str, *, out=sys.stdout) -> int:
  """Compiles the run of `config` for `topology`; prints the report; returns the exit status."""
  platform, devices = topology_lib.devices(topology)
  info = data_info.IMAGENET_1K
  if "num_classes" in config.data and config.data.num_classes > 0:
    info = data_info.DatasetInfo(
      int(config.data.num_classes), info.num_train_examples, info.num_eval_examples
    )
  result = {
    "topology": topology,
    "device_kind": devices[0].device_kind,
    "num_devices": len(devices),
    "global_batch": int(config.batch_size),
    "per_device_batch": config.batch_size / len(devices),
    "grad_accum_steps": config.grad_accum_steps,
  }
  with layers.compiling_for(platform):
    task = make_task(config, None, info=info)
    run_ = loop.setup(config, task, devices=devices)
    result["mesh"] = dict(run_.mesh.shape)
    result["depthwise_impl"] = layers.default_depthwise_impl()
    options = None
    if platform == "gpu":
      options = gpu_targets.COMPILER_OPTIONS
    try:
      step = run_.compile_train_step(options)
    except Exception as e:  # noqa: BLE001 (XlaRuntimeError; the compiler's OOM is not a bug)
      oom = _out_of_memory(e)
      if oom is None:
        raise
      result.update(fits=False, out_of_memory=oom)
      _print(result, out, f"does not fit: the compiler ran out of memory ({oom}).", config)
      return 1
    result.update(step.report())
    if platform == "gpu":  # XLA:GPU's own cost analysis leaves out the cuBLAS and cuDNN calls
      result.update(step.traffic_report(blocks=blocks(config)))
    if task.compile_eval is not None:
      eval_cost = task.compile_eval(run_, options)
      result["eval_compile_seconds"] = round(eval_cost.compile_seconds, 1)
      result["eval_total_gib_per_device"] = round(eval_cost.total_bytes / cost_lib.GIB, 3)
  if result["fits"] is False:
    need, have = result["total_gib_per_device"], result["hbm_gib_per_device"]
    _print(
      result,
      out,
      f"does not fit: needs {need:.2f} GiB per device, "
      f"{need - (1 - cost_lib.HEADROOM) * have:.2f} GiB more than {1 - cost_lib.HEADROOM:.0%} "
      f"of the {have:.1f} GiB of HBM.",
      config,
    )
    return 1
  _print(result, out, "fits." if result["fits"] else "compiled (device memory unknown).", config)
  return 0


def blocks(config) -> int:
  """ConvNeXt V2 blocks of the network the config trains (the FCMAE decoder's included)."""
  from models import convnextv2

  blocks = sum(convnextv2.variant_spec(config.model.variant)["depths"])
  return blocks + (config.fcmae.decoder_depth if "fcmae" in config else 0)


def _print(result: dict, out, verdict: str, config) -> None:
  lines = [
    f"{result['topology']}: {result['num_devices']} x {result['device_kind']}, mesh "
    f"{result.get('mesh')}, global batch {result['global_batch']} "
    f"({result['per_device_batch']:g} per device"
    + (f", {result['grad_accum_steps']} micro-batches" if result["grad_accum_steps"] > 1 else "")
    + ")"
  ]
  if "compile_seconds" in result:
    lines.append(
      f"  train step: compiled in {result['compile_seconds']:.0f} s, "
      f"{result['gflop_per_example']:.2f} GFLOP per example; per device: state "
      f"{result['state_gib_per_device']:.2f} GiB, temporaries {result['temp_gib_per_device']:.2f} "
      f"GiB, total {result['total_gib_per_device']:.2f} of {result['hbm_gib_per_device']} GiB"
    )
  if "hbm_mb_per_example" in result:
    lines.append(
      f"  HBM traffic: {result['hbm_mb_per_example']:.1f} MB per example (XLA's fusions "
      f"{result['xla_mb_per_example']:.1f}, cuBLAS / cuDNN calls "
      f"{result['library_mb_per_example']:.1f}); {result['kernels']} kernels, "
      f"{result['kernels_per_block']:.1f} per block"
    )
    if "roofline_images_per_sec" in result:
      lines.append(
        f"  roofline per step: memory {result['roofline_memory_ms']:.1f} ms, FLOPs "
        f"{result['roofline_flops_ms']:.1f} ms: at most "
        f"{result['roofline_images_per_sec']:,.0f} images/s per device"
      )
  if "eval_compile_seconds" in result:
    lines.append(
      f"  eval step: compiled in {result['eval_compile_seconds']:.0f} s, "
      f"{result['eval_total_gib_per_device']:.2f} GiB per device"
    )
  lines.append(f"  {verdict}")
  if result.get("fits") is False:
    lines.append(
      "  To fit: shard the state over more devices (--config.mesh.fsdp=N), recompute "
      "activations (--config.model.remat=True), or lower the per-device batch "
      "(--config.grad_accum_steps=K, or a larger slice)."
    )
  print("\n".join(lines), file=out)
  print(json.dumps(result), file=out, flush=True)
