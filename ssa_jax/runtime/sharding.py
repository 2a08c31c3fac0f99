"""The device mesh ('data', 'fsdp', 'tensor'), logical-axis rules, and host batches -> global arrays.

All partitioning decisions live here: parameters carry logical axis names (see ssa_jax/model/layers.py), and the
rules in `config.sharding.rules` map them to mesh axes. Batches are split over ('data', 'fsdp').
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from ssa_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# Auto axes: GSPMD propagates shardings from the annotated params and batch (no sharding-in-types).
AXIS_TYPES = (AxisType.Auto,) * len(MESH_AXES)


def mesh_shape(mesh_cfg, num_devices: int, where: str = "config.mesh") -> tuple[int, ...]:
  """The (data, fsdp, tensor) sizes of `mesh_cfg` over `num_devices` devices; one size may be -1 (the rest)."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  shown = dict(zip(MESH_AXES, sizes))
  if sizes.count(-1) > 1:
    raise ConfigError(f"{where}: at most one of {MESH_AXES} may be -1, got {shown}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"{where}: axis sizes must be positive or -1, got {shown}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f"{where}: {shown} does not divide the {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"{where}: {shown} needs {math.prod(sizes)} devices, {num_devices} available")
  return tuple(sizes)


def num_slices(devices: Sequence[jax.Device]) -> int:
  """The slices (TPU slices joined over the data-center network) `devices` span; 1 for devices without a slice
  index (CPU, GPU)."""
  return len({getattr(d, "slice_index", 0) for d in devices})


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None, where: str = "config.mesh") -> Mesh:
  """Mesh with axes data/fsdp/tensor over `devices` (default jax.devices()), the first `num_devices` of them
  (-1: all); one axis size may be -1 (the rest). Over K > 1 slices the sizes are one slice's, and the data axis
  spans the K slices as well (config.mesh.dcn_data): only the data-parallel gradient reduction crosses slices,
  FSDP gathers and tensor collectives stay on a slice's own interconnect (mesh_utils' hybrid mesh, as MaxText)."""
  devices = list(jax.devices() if devices is None else devices)
  n = mesh_cfg.get("num_devices", -1)
  if n != -1:
    if not 0 < n <= len(devices):
      raise ConfigError(f"{where}.num_devices: {n} requested, {len(devices)} available")
    devices = devices[:n]
  slices, dcn_data = num_slices(devices), mesh_cfg.get("dcn_data", -1)
  if dcn_data not in (-1, slices):
    raise ConfigError(f"{where}.dcn_data: {dcn_data}, but the devices span {slices} slice(s): the data axis "
                      "spans every slice (-1), fsdp and tensor stay inside one")
  if slices == 1:
    return jax.make_mesh(mesh_shape(mesh_cfg, len(devices), where), MESH_AXES, axis_types=AXIS_TYPES,
                         devices=devices)
  per_slice = mesh_shape(mesh_cfg, len(devices) // slices, f"{where} on each of {slices} slices")
  grid = mesh_utils.create_hybrid_device_mesh(per_slice, (slices,) + (1,) * (len(MESH_AXES) - 1), devices)
  return Mesh(np.asarray(grid), MESH_AXES, axis_types=AXIS_TYPES)


def rules_from_config(rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
  """Logical-axis rules from config data: [[logical, mesh axis | [axes] | None], ...]."""
  return tuple((str(logical), tuple(target) if isinstance(target, (list, tuple)) else target)
               for logical, target, *_ in rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of (batch, ...) arrays: the batch over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays every device holds whole."""
  return NamedSharding(mesh, P())


def check_batch_divisible(global_batch: int, mesh: Mesh, microbatches: int = 1,
                          where: str = "config.train.global_batch_size") -> None:
  """Fails naming the field when the batch does not split over the batch axes (and microbatches)."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % (shards * microbatches):
    raise ConfigError(f"{where}: {global_batch} is not divisible by data x fsdp = {shards} devices"
                      + (f" x {microbatches} microbatches" if microbatches > 1 else ""))
  if global_batch % jax.process_count():
    raise ConfigError(f"{where}: {global_batch} is not divisible by the {jax.process_count()} processes")


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows -> global arrays laid out by batch_sharding (multi-host safe)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
