"""One mesh function for one slice and many: over K TPU slices (libtpu's abstract topology, nothing runs), the
data axis spans the slices and fsdp / tensor stay inside one; the dry run reports the mesh per slice. The tiny
config's step compiled by libtpu for two slices: only data-parallel reductions cross the data-center network
(bench/slice_collectives.py reads the program)."""

from __future__ import annotations

import importlib
import importlib.util

import jax
import ml_collections
import numpy as np
import pytest

from bench_modules import bench_module
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


def _on_two_slices(global_batch_size: int = 16, **mesh):
  """bench/slice_collectives.py's report of the tiny config's step compiled for 2 x v5p-8, `mesh` per slice."""
  config = importlib.import_module("configs.tiny").get_config()
  config.model.scan_layers = True  # one layer's program: a faster compile
  config.train.global_batch_size = global_batch_size
  config.mesh.update(mesh)
  return bench_module("slice_collectives").analyse(config, "v5p-8", 2)


def _assert_only_data_parallel_reductions_cross(report):
  crossing = [c for c in report["collectives"] if c["crosses_slices"]]
  # An activation crossing slices would be a gather, an all-to-all, or a sum of the model's forward pass.
  assert crossing and all(c["kind"] == "all-reduce" and c["role"] != "forward" for c in crossing), \
      report["not_data_parallel_reductions"]
  # The gradient sums are each device's parameter shards (a 1 / data part of them when the slice has data
  # parallelism of its own: reduce-scattered inside first), plus a few loss and metric sums.
  shard = report["parameter_shard_elements_per_device"]
  assert report["crossing_elements_per_device_per_step"] <= shard + 16384
  assert report["crossing_by_role"]["backward"]["elements"] >= 0.9 * shard / report["mesh_per_slice"]["data"]
  # Every DCN transfer of the compiled program is one of them.
  assert report["dcn_transfers"] and not report["dcn_transfers_without_a_crossing_collective"]
  assert not report["crossing_collectives_without_a_dcn_transfer"]
  assert report["only_data_parallel_reductions_cross"]


def test_replica_groups_in_each_of_hlos_forms():
  groups = bench_module("slice_collectives").replica_groups
  assert groups("replica_groups={{0,4},{1,5}}, x") == [[0, 4], [1, 5]]
  assert groups("replica_groups=[4,2]<=[2,4]T(1,0), x") == [[0, 4], [1, 5], [2, 6], [3, 7]]
  assert groups("replica_groups=[2,4]<=[8], x") == [[0, 1, 2, 3], [4, 5, 6, 7]]
  mesh = "replica_groups=mesh['axis_0'=1,'axis_1'=4,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_2'}, x"
  assert groups(mesh) == [[0, 4], [1, 5], [2, 6], [3, 7]]
  assert groups("replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, x") == [[0, 1, 2, 3], [4, 5, 6, 7]]


@needs_libtpu
def test_over_two_slices_only_data_parallel_reductions_cross_them():
  """Tensor and data parallelism inside each slice, data parallelism across: gradient (and loss) sums cross;
  the tensor-parallel collectives of the forward pass stay on the slice's interconnect."""
  report = _on_two_slices(data=-1, fsdp=1, tensor=2)
  assert report["mesh_per_slice"] == {"data": 2, "fsdp": 1, "tensor": 2}
  _assert_only_data_parallel_reductions_cross(report)
  assert any(c["role"] == "forward" and not c["crosses_slices"] for c in report["collectives"])


@needs_libtpu
def test_fsdp_inside_slices_sends_only_gradient_sums_across():
  """FSDP over each slice's 4 chips: its gathers and reduce-scatters stay inside, each device's gradient shard
  is summed across. 8 rows a device: with 2, the partitioner gathers the embedding's output cotangent (smaller
  than its table then) across slices instead (docs/distributed.md, 'Two slices')."""
  report = _on_two_slices(global_batch_size=64, data=1, fsdp=-1, tensor=1)
  assert report["mesh_across_slices"] == {"data": 2, "fsdp": 1, "tensor": 1}
  _assert_only_data_parallel_reductions_cross(report)
  assert any(c["kind"] == "reduce-scatter" and not c["crosses_slices"] for c in report["collectives"])
