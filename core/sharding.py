"""Device mesh, the parameter sharding rule, and multi-host start-up.

The mesh has two axes, ("data", "fsdp"). A batch is split over both (every device sees a
different slice of it); parameters and optimizer state are split over "fsdp" only, so with
fsdp = 1 the run is plain data parallelism and with data = 1 it is fully sharded (ZeRO-3 like).

The rule, from the config (`sharding.min_size`): a tensor with at least min_size elements is
split over "fsdp" along its largest dimension that the fsdp size divides (never along the
leading block axis of a stacked stage, which `lax.scan` walks); smaller tensors are replicated.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from core.errors import UserError

DATA_AXES = ("data", "fsdp")


class MeshError(UserError, ValueError):
  """A mesh or batch that does not fit the devices there are."""


def mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
  """Resolves -1 entries ("the rest of the devices") and checks the product."""
  if data == -1 and fsdp == -1:
    raise MeshError("mesh.data and mesh.fsdp cannot both be -1.")
  if data == -1:
    if num_devices % fsdp:
      raise MeshError(f"mesh.fsdp={fsdp} does not divide the {num_devices} devices.")
    data = num_devices // fsdp
  elif fsdp == -1:
    if num_devices % data:
      raise MeshError(f"mesh.data={data} does not divide the {num_devices} devices.")
    fsdp = num_devices // data
  if data * fsdp != num_devices:
    raise MeshError(
      f"mesh.data={data} x mesh.fsdp={fsdp} = {data * fsdp} devices, but "
      f"{num_devices} are available; use -1 for one axis to take the rest."
    )
  return data, fsdp


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
  """The ("data", "fsdp") mesh; axes are Auto (XLA's sharding propagation inside the step)."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(data, fsdp, len(devices))
  return jax.make_mesh(
    shape, DATA_AXES, devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * len(DATA_AXES)
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _is_stacked(path) -> bool:
  return any(getattr(k, "key", None) == "blocks" for k in path)


def leaf_spec(path, shape, fsdp_size: int, min_size: int) -> P:
  """The partition spec of one tensor under the rule of the module docstring."""
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  first = 1 if _is_stacked(path) and len(shape) > 1 else 0
  candidates = [d for d in range(first, len(shape)) if shape[d] % fsdp_size == 0]
  if not candidates:
    return P()
  dim = max(candidates, key=lambda d: (shape[d], -d))
  spec = [None] * len(shape)
  spec[dim] = "fsdp"
  return P(*spec)


def tree_shardings(tree, mesh: Mesh, min_size: int):
  """NamedShardings for every leaf of a (possibly abstract) pytree: params, optimizer state."""
  fsdp_size = mesh.shape["fsdp"]
  return jax.tree_util.tree_map_with_path(
    lambda path, leaf: NamedSharding(mesh, leaf_spec(path, np.shape(leaf), fsdp_size, min_size)),
    tree,
  )


def make_global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """Assembles each process's numpy batch into one global jax.Array per field."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def micro_batches(batch: dict, k: int, mesh: Mesh) -> dict:
  """Each (B, ...) array of a batch-sharded global batch as (k, B/k, ...): k micro-batches, each
  spread over every device of the mesh (micro-batch j takes the j-th k-th of every device's
  share, so nothing moves between devices)."""
  n = mesh.size

  def split(x):
    b = x.shape[0]
    x = x.reshape(n, k, b // (n * k), *x.shape[1:])
    x = jnp.swapaxes(x, 0, 1).reshape(k, b // k, *x.shape[3:])
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, DATA_AXES)))

  return jax.tree.map(split, batch)


def maybe_initialize_distributed(
  coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
) -> None:
  """Starts JAX's distributed runtime when the run spans several processes.

  Explicit flags (coordinator address, process count and id) win; otherwise a TPU pod or a
  SLURM job with several tasks is detected and JAX's own auto-detection is used. A single
  process does nothing.
  """
  if coordinator_address:
    if num_processes < 1 or process_id < 0:
      raise ValueError("--coordinator_address needs --num_processes and --process_id too.")
    jax.distributed.initialize(
      coordinator_address, num_processes=num_processes, process_id=process_id
    )
  elif (
    int(os.environ.get("SLURM_NTASKS", "1")) > 1
    or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
  ):
    jax.distributed.initialize()
  else:
    return
  logging.info(
    "Process %d of %d, %d local / %d global devices.",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
