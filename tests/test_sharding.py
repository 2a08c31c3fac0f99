"""Sharding: mesh construction, parameters laid out by the logical rules, and identical numerics on any mesh."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from configs import base
from ssa_jax.errors import ConfigError
from ssa_jax.model.config import model_config_from_dict
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.params import param_shapes
from ssa_jax.runtime import sharding
from ssa_jax.train.optim import learning_rate_schedule, make_optimizer
from ssa_jax.train.state import create_state, state_shardings
from ssa_jax.train.step import jit_train_step

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")


def _config(data=-1, fsdp=1, tensor=1, num_devices=-1):
  config = base.get_config("tiny", "ssa", mode="demo")
  m = config.model
  m.d_model, m.num_layers, m.num_heads, m.mlp_dim, m.max_seq_len, m.vocab_size = 32, 2, 4, 64, 32, 128
  config.mesh.update(dict(data=data, fsdp=fsdp, tensor=tensor, num_devices=num_devices))
  config.train.update(dict(steps=5, warmup_steps=2, lr=1e-2))
  return config


def _losses_on(config, batches):
  model_cfg = model_config_from_dict(config.model)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.sharding.rules)
  tx = make_optimizer(config.train, param_shapes(model_cfg), model_cfg)
  _, shardings = state_shardings(model_cfg, tx, mesh, rules)
  state = create_state(model_cfg, tx, shardings, jax.random.PRNGKey(0))
  step = jit_train_step(Decoder(model_cfg), tx, learning_rate_schedule(config.train), 1, shardings, mesh)
  losses = []
  for b in batches:
    state, m = step(state, sharding.global_batch({"tokens": b}, mesh))
    losses.append(float(m["loss"]))
  return np.array(losses), state, mesh


@needs_8
def test_same_losses_on_one_device_and_on_8_device_meshes():
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, 128, (8, 17)).astype(np.int32) for _ in range(5)]
  ref, _, _ = _losses_on(_config(num_devices=1), batches)
  assert ref[-1] < ref[0]  # it trains
  for mesh_axes in (dict(data=2, fsdp=2, tensor=2), dict(data=1, fsdp=8, tensor=1)):
    losses, state, mesh = _losses_on(_config(**mesh_axes), batches)
    np.testing.assert_allclose(losses, ref, rtol=1e-5, err_msg=str(mesh_axes))
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1, **mesh_axes}


@needs_8
def test_parameters_are_sharded_as_the_rules_say():
  _, state, mesh = _losses_on(_config(data=2, fsdp=2, tensor=2), [np.zeros((8, 17), np.int32)])
  layer = state.params["layers_0"]
  assert layer["attn"]["q"]["kernel"].sharding.spec == P("fsdp", "tensor", None)  # (embed, heads, head_dim)
  assert layer["attn"]["o"]["kernel"].sharding.spec == P("tensor", None, "fsdp")  # (heads, head_dim, embed)
  assert layer["mlp"]["up"]["kernel"].sharding.spec == P("fsdp", "tensor")  # (embed, mlp)
  assert layer["attn"]["ssa_q"]["w1"]["kernel"].sharding.spec == P("fsdp", None)  # (embed, ssa_hidden)
  assert state.params["embed"]["embedding"].sharding.spec == P("tensor", "fsdp")  # (vocab, embed)
  # Each device holds a quarter of the q kernel: split over fsdp (2) x tensor (2), replicated over data.
  q = layer["attn"]["q"]["kernel"]
  assert q.addressable_shards[0].data.size == q.size // 4
  # Adam's moments are laid out like their parameters.
  mu = state.opt_state[2].inner_states["decay"].inner_state[0].mu
  assert mu["layers_0"]["attn"]["q"]["kernel"].sharding.spec == P("fsdp", "tensor", None)


@needs_8
def test_the_phi_buffer_is_sharded_by_its_vocab_axis():
  config = _config(data=2, fsdp=2, tensor=2)
  config.model.ssa.token_kind = "frequency"
  model_cfg = model_config_from_dict(config.model)
  rules = sharding.rules_from_config(config.sharding.rules)
  abstract, shardings = state_shardings(model_cfg, optax.sgd(0.1), sharding.make_mesh(config.mesh), rules)
  assert "token_feature" not in abstract.params and abstract.buffers["token_feature"].shape == (128,)
  assert shardings.buffers["token_feature"].spec == P("tensor")  # (vocab,), as the embedding's vocab axis


@pytest.mark.parametrize("axes,message", [
    (dict(data=3, fsdp=1, tensor=1), "config.mesh"),
    (dict(data=-1, fsdp=-1, tensor=1), "at most one"),
])
def test_bad_mesh_names_the_field(axes, message):
  config = _config(**axes)
  with pytest.raises(ConfigError, match=message):
    sharding.make_mesh(config.mesh)


@needs_8
def test_batch_not_divisible_by_data_axes_names_the_field():
  mesh = sharding.make_mesh(_config(data=4, fsdp=2).mesh)
  with pytest.raises(ConfigError, match="config.train.global_batch_size"):
    sharding.check_batch_divisible(12, mesh)


@needs_8
def test_make_mesh_lays_the_config_over_the_devices_it_is_given():
  """A device list (a target's, evaluation's) in place of jax.devices(): -1 resolves against it, num_devices
  takes its first devices, and the mesh holds exactly those devices in row-major order."""
  devices = jax.devices()[2:8]  # six of the eight, not starting at device 0
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=2), devices)
  assert dict(mesh.shape) == {"data": 3, "fsdp": 1, "tensor": 2}
  assert sorted(d.id for d in mesh.devices.flat) == [2, 3, 4, 5, 6, 7]
  trimmed = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1, num_devices=4), devices)
  assert dict(trimmed.shape) == {"data": 1, "fsdp": 4, "tensor": 1}
  assert sorted(d.id for d in trimmed.devices.flat) == [2, 3, 4, 5]
  with pytest.raises(ConfigError, match=r"config\.mesh\.num_devices: 7 requested, 6 available"):
    sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1, num_devices=7), devices)
  with pytest.raises(ConfigError, match="does not divide the 6 devices"):
    sharding.make_mesh(dict(data=-1, fsdp=4, tensor=1), devices)
