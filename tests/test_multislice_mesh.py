"""One mesh function for one slice and many: over K TPU slices (libtpu's abstract topology, nothing runs), the
data axis spans the slices and fsdp / tensor stay inside one; the dry run reports the mesh per slice."""

from __future__ import annotations

import importlib.util

import jax
import ml_collections
import numpy as np
import pytest

from ssa_jax.errors import ConfigError
from ssa_jax.runtime import sharding
from ssa_jax.train import targets

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="needs the TPU compiler: pip install -e '.[tpu]'")


def _mesh_cfg(**sizes):
  return ml_collections.ConfigDict(dict(dict(data=-1, fsdp=1, tensor=1, num_devices=-1, dcn_data=-1), **sizes))


@needs_libtpu
@pytest.mark.parametrize("fsdp,tensor", [(2, 1), (1, 2), (4, 1)])
def test_over_two_slices_only_the_data_axis_crosses_them(fsdp, tensor):
  devices = targets.target_devices(targets.parse_target("v5p-16", 2))  # 2 slices of 8 chips
  mesh = sharding.make_mesh(_mesh_cfg(fsdp=fsdp, tensor=tensor), devices)
  assert dict(mesh.shape) == {"data": 16 // (fsdp * tensor), "fsdp": fsdp, "tensor": tensor}
  slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  # Along fsdp and tensor every device shares its slice; along data the slices change once, halfway.
  assert (slice_of == slice_of[:, :1, :1]).all()
  data_slices = slice_of[:, 0, 0]
  half = len(data_slices) // 2
  assert (data_slices[:half] == data_slices[0]).all() and (data_slices[half:] != data_slices[0]).all()


@needs_libtpu
def test_the_target_mesh_is_the_live_mesh_function():
  target = targets.parse_target("v5p-8", 2)
  devices = targets.target_devices(target)
  cfg = _mesh_cfg(fsdp=2)
  ours = targets.target_mesh(cfg, target, devices)
  assert (ours.devices == sharding.make_mesh(cfg, devices).devices).all()


@needs_libtpu
def test_dcn_data_other_than_the_slice_count_is_refused_by_name():
  devices = targets.target_devices(targets.parse_target("v5p-8", 2))
  with pytest.raises(ConfigError, match=r"config\.mesh\.dcn_data: 3, but the devices span 2 slice\(s\)"):
    sharding.make_mesh(_mesh_cfg(dcn_data=3), devices)


def test_one_slice_of_cpu_devices_is_the_plain_mesh():
  mesh = sharding.make_mesh(_mesh_cfg(fsdp=2))
  assert sharding.num_slices(mesh.devices.flat) == 1
  assert mesh.devices.size == len(jax.devices())
