"""Accelerators a dry run compiles for on this host (`train.py --dry_run --target=NAME`): the chip table, NAME
-> the target's devices (from its own compiler, no chip needed), and the config's mesh laid over them.

NAME is a Cloud TPU accelerator type or a GPU count:
  v4-N, v5p-N  N counts TensorCores, two a chip (v5p-8 = 4 chips, one host; v4 and v5p run one device a chip)
  v5e-N (also v5litepod-N), v6e-N   N counts chips (one TensorCore each), 8 a host above 4 chips
  h100-N, h200-N, a100-N            N GPUs, 8 a host (N <= 8, or a multiple of 8)
Each TPU accelerator type maps to the slice shape Google provisions for it (cloud.google.com/tpu/docs/v4, v5e,
v5p, v6e); `--target_slices=K` joins K such slices over the data-center network (DCN).

The devices come from `jax.experimental.topologies.get_topology_desc`: libtpu describes a TPU slice, jax's CUDA
plugin a GPU host from a GpuTargetConfigProto written here from the chip's published specifications (no driver
or GPU is needed; nothing is autotuned). `require_compiler` names the extra that installs each.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from typing import Any

from jax.experimental import topologies
from jax.sharding import Mesh

from ssa_jax.errors import ConfigError
from ssa_jax.runtime import sharding

GiB = 2**30
# A step fits when the compiler's bytes per device are at most this fraction of the chip's memory: the rest is
# left to the runtime (the prefetched batches, collectives' buffers, the allocator's fragmentation).
FIT_FRACTION = 0.9
FIT_RULE = f"memory_bytes_per_device <= {FIT_FRACTION} x hbm_bytes_per_device"


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator model: its memory and how its accelerator types are named and laid out."""

  name: str  # as in NAME: 'v5p', 'h100'
  platform: str  # 'tpu' or 'gpu' (jax's platform name for kernel choices)
  hbm_bytes: int  # the vendor's memory capacity per chip (TPU: per megacore device)
  hbm_bandwidth: float  # bytes/s, published
  cores_per_chip: int = 1  # TPU: TensorCores a chip (NAME counts cores for v4 / v5p)
  topology_dims: int = 2  # TPU: 2D (v5e, v6e) or 3D (v4, v5p) slices
  max_chips: int = 0  # TPU: the largest slice
  gpu_info: dict[str, Any] | None = None  # GPU: GpuDeviceInfoProto fields
  compute_capability: tuple[int, int] = (0, 0)
  description: str = ""  # GPU: the device description (jax's device_kind)


# TPU facts: cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e} (capacity, bandwidth). GPU facts: NVIDIA's H100 / H200
# / A100 datasheets and the CUDA programming guide's per-compute-capability limits (SMs, shared memory, L2).
_H100_SM = dict(threads_per_block_limit=1024, threads_per_warp=32, shared_memory_per_block=48 * 1024,
                shared_memory_per_core=228 * 1024, shared_memory_per_block_optin=227 * 1024,
                threads_per_core_limit=2048, core_count=132, fpus_per_core=128, registers_per_core_limit=65536,
                registers_per_block_limit=65536, l2_cache_size=50 * 2**20, clock_rate_ghz=1.98)
CHIPS = {
    "v4": Chip("v4", "tpu", 32 * GiB, 1200e9, cores_per_chip=2, topology_dims=3, max_chips=4096),
    "v5e": Chip("v5e", "tpu", 16 * GiB, 819e9, max_chips=256),
    "v5p": Chip("v5p", "tpu", 95 * GiB, 2765e9, cores_per_chip=2, topology_dims=3, max_chips=6144),
    "v6e": Chip("v6e", "tpu", 32 * GiB, 1640e9, max_chips=256),
    "h100": Chip("h100", "gpu", 80 * GiB, 3.35e12, gpu_info=_H100_SM, compute_capability=(9, 0),
                 description="NVIDIA H100 80GB HBM3"),
    "h200": Chip("h200", "gpu", 141 * GiB, 4.8e12, gpu_info=_H100_SM, compute_capability=(9, 0),
                 description="NVIDIA H200"),
    "a100": Chip("a100", "gpu", 80 * GiB, 2.039e12, compute_capability=(8, 0), description="NVIDIA A100-SXM4-80GB",
                 gpu_info=dict(_H100_SM, shared_memory_per_core=164 * 1024, shared_memory_per_block_optin=163 * 1024,
                               core_count=108, fpus_per_core=64, l2_cache_size=40 * 2**20, clock_rate_ghz=1.41)),
}
_ALIASES = {"v5litepod": "v5e"}
GPUS_PER_HOST = 8
# The slice shape of each chip count, as Google provisions the accelerator types.
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
              256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16),
              6144: (16, 16, 24)}
_INSTALL = {"tpu": "pip install -e '.[tpu]' (libtpu, the TPU compiler)",
            "gpu": "pip install -e '.[cuda]' (jax's CUDA plugin, the GPU compiler; about 5.5 GB)"}


@dataclasses.dataclass(frozen=True)
class Target:
  """A parsed NAME: the chip, the chips of one slice (TPU) or of all hosts (GPU), their layout, the slices."""

  name: str  # canonical: 'v5e-16' for 'v5litepod-16'
  chip: Chip
  chips: int  # per slice (GPU: in all)
  shape: tuple[int, ...]  # TPU: the slice's chip grid; GPU: (hosts, 1, GPUs a host)
  slices: int = 1


_VALID_NAMES = ("v4-8 ... v4-8192, v5p-8 ... v5p-12288 (TensorCores), v5e-1 / v5litepod-1 ... v5e-256, "
                "v6e-1 ... v6e-256 (chips), h100-N / h200-N / a100-N (GPUs, 8 a host)")


def parse_target(name: str, slices: int = 1) -> Target:
  """NAME (and --target_slices) -> Target; a one-line ConfigError naming what is accepted otherwise."""
  where = f"--target={name}"
  match = re.fullmatch(r"([a-z0-9]+?)-(\d+)", name.strip().lower())
  family = _ALIASES.get(match.group(1), match.group(1)) if match else None
  if family not in CHIPS:
    raise ConfigError(f"{where}: unknown accelerator; expected one of {_VALID_NAMES}")
  chip, count = CHIPS[family], int(match.group(2))
  if not isinstance(slices, int) or slices < 1:
    raise ConfigError(f"--target_slices: expected a positive int, got {slices!r}")
  if chip.platform == "gpu":
    if slices != 1:
      raise ConfigError(f"--target_slices={slices}: slices are TPU pods'; for more GPUs name them ({family}-16)")
    if count < 1 or (count > GPUS_PER_HOST and count % GPUS_PER_HOST):
      raise ConfigError(f"{where}: expected 1 to {GPUS_PER_HOST} GPUs, or a multiple of {GPUS_PER_HOST} "
                        f"({GPUS_PER_HOST} a host)")
    hosts = max(1, count // GPUS_PER_HOST)
    return Target(f"{family}-{count}", chip, count, (hosts, 1, count // hosts))
  if count % chip.cores_per_chip:
    raise ConfigError(f"{where}: {family} accelerator types count TensorCores, {chip.cores_per_chip} a chip")
  chips = count // chip.cores_per_chip
  shapes = _SHAPES_3D if chip.topology_dims == 3 else _SHAPES_2D
  if chips not in shapes or chips > chip.max_chips:
    sizes = ", ".join(f"{family}-{n * chip.cores_per_chip}" for n in shapes if n <= chip.max_chips)
    raise ConfigError(f"{where}: not a {family} slice; expected one of {sizes}")
  return Target(f"{family}-{count}", chip, chips, shapes[chips], slices)


def require_compiler(target: Target) -> None:
  """Fails in one line, naming the extra to install, when the target's compiler is not installed here."""
  modules = ("libtpu",) if target.chip.platform == "tpu" else ("jax_cuda12_plugin", "jax_cuda13_plugin")
  if all(importlib.util.find_spec(m) is None for m in modules):
    raise ConfigError(f"--target={target.name}: the {target.chip.platform.upper()} compiler is not installed "
                      f"here: {_INSTALL[target.chip.platform]}")


def gpu_target_config(chip: Chip) -> str:
  """The chip as a GpuTargetConfigProto in text format (what XLA's GPU compiler reads instead of a device)."""
  info = dict(chip.gpu_info or {}, block_dim_limit_x=2**31 - 1, block_dim_limit_y=65535, block_dim_limit_z=65535,
              memory_bandwidth=int(chip.hbm_bandwidth), device_memory_size=chip.hbm_bytes)
  major, minor = chip.compute_capability
  fields = "\n".join(f"  {k}: {v}" for k, v in sorted(info.items()))
  # cuDNN and CUDA versions: those of the jax[cuda12] wheels (cuDNN 9.8+, CUDA 12.8+); the cuDNN attention
  # fusion is only emitted for cuDNN >= 8.9.
  return (f"gpu_device_info {{\n{fields}\n  cuda_compute_capability {{ major: {major} minor: {minor} }}\n}}\n"
          f'platform_name: "CUDA"\ndnn_version_info {{ major: 9 minor: 8 patch: 0 }}\n'
          f'runtime_version {{ major: 12 minor: 8 patch: 0 }}\ndevice_description_str: "{chip.description}"\n')


def target_devices(target: Target) -> list:
  """The target's devices, described by its own compiler (an abstract topology: nothing runs on them)."""
  chip = target.chip
  if chip.platform == "gpu":
    hosts, _, per_host = target.shape
    topology = topologies.get_topology_desc(platform="cuda", topology=f"{hosts}x1x{per_host}",
                                            target_config=gpu_target_config(chip))
    return list(topology.devices)
  # Hosts: 4 chips (2x2x1) on v4 / v5p; v5e / v6e VMs of 1, 4 or 8 chips (2x4 in slices of 8 and more).
  per_host = (2, 2, 1) if chip.topology_dims == 3 or target.chips == 4 else (
      (1, 1, 1) if target.chips == 1 else (2, 4, 1))
  kwargs: dict[str, Any] = dict(chips_per_host_bounds=per_host)
  if chip.cores_per_chip == 2:
    kwargs["chip_config_name"] = "megacore"  # one device per chip, both TensorCores
  if target.slices > 1:
    kwargs["num_slices"] = target.slices
  name = f"{chip.name}:{'x'.join(map(str, target.shape))}"
  return list(topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs).devices)


def target_mesh(mesh_cfg, target: Target, devices: list, where: str = "config.mesh") -> Mesh:
  """config.mesh laid over the target's devices by the live run's own function (sharding.make_mesh): over K
  slices, the sizes are one slice's and the data axis spans the K slices."""
  n = mesh_cfg.get("num_devices", -1)
  if n not in (-1, len(devices)):
    raise ConfigError(f"{where}.num_devices: {n}; --target={target.name} compiles for all of its "
                      f"{len(devices)} devices (-1)")
  return sharding.make_mesh(mesh_cfg, devices, f"{where} on {target.name}")


def num_hosts(devices: list) -> int:
  """The processes (hosts) the target's devices belong to."""
  return len({d.process_index for d in devices})
