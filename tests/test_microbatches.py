"""Gradient accumulation (config.train.microbatches): strided microbatches, the whole batch's update, less memory."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from ssa_jax.errors import ConfigError
from ssa_jax.model.config import model_config_from_dict
from ssa_jax.model.decoder import Decoder
from ssa_jax.runtime import sharding
from ssa_jax.train.optim import learning_rate_schedule
from ssa_jax.train.sections import train_section
from ssa_jax.train.state import create_state, state_shardings
from ssa_jax.train.step import jit_train_step, strided_microbatches

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")

BATCH, SEQ = 32, 16


def _setup():
  """(model config, optimizer, schedule, shardings, mesh) of a tiny SSA model on all 8 devices (data axis).

  Plain SGD at lr 1: the step subtracts the gradient itself, so equal parameters mean equal gradients (Adam's
  first step, about lr x sign(g), would turn float noise in gradients near zero into differences of 2 x lr).
  """
  config = base.get_config("tiny", "ssa", mode="demo")
  m = config.model
  m.d_model, m.num_layers, m.num_heads, m.mlp_dim, m.max_seq_len, m.vocab_size = 32, 2, 4, 64, 32, 128
  config.train.update(dict(steps=5, warmup_steps=0, lr=1.0, schedule="constant"))
  model_cfg = model_config_from_dict(config.model)
  mesh = sharding.make_mesh(config.mesh)
  tx = optax.sgd(1.0)
  _, shardings = state_shardings(model_cfg, tx, mesh, sharding.rules_from_config(config.sharding.rules))
  return model_cfg, tx, learning_rate_schedule(config.train), shardings, mesh


def _batch(mesh):
  tokens = np.random.default_rng(0).integers(0, 128, (BATCH, SEQ + 1)).astype(np.int32)
  return sharding.global_batch({"tokens": tokens}, mesh)


def test_strided_microbatches_take_every_mth_row():
  rows = jnp.arange(12)[:, None] * jnp.ones((1, 3), jnp.int32)
  mb = np.asarray(strided_microbatches(rows, 4))
  assert mb.shape == (4, 3, 3)
  for m in range(4):
    np.testing.assert_array_equal(mb[m][:, 0], [m, m + 4, m + 8])
  with pytest.raises(ValueError, match="microbatches: 5 does not divide the batch of 12 rows"):
    strided_microbatches(rows, 5)


def test_zero_microbatches_is_refused_naming_the_field():
  train = base.get_config("tiny", "ssa", mode="demo").train
  train.microbatches = 0
  with pytest.raises(ConfigError, match=r"^config\.train\.microbatches: expected an int >= 1, got 0"):
    train_section(train)


@needs_8
def test_accumulated_update_equals_the_whole_batch_and_temp_memory_falls():
  model_cfg, tx, schedule, shardings, mesh = _setup()
  batch = _batch(mesh)
  params, losses, temp_bytes = {}, {}, {}
  for m in (1, 2, 4):
    step = jit_train_step(Decoder(model_cfg), tx, schedule, m, shardings, mesh)
    state = create_state(model_cfg, tx, shardings, jax.random.PRNGKey(0))
    temp_bytes[m] = step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes
    state, metrics = step(state, batch)
    assert not bool(metrics["nonfinite"])
    params[m], losses[m] = jax.device_get(state.params), float(metrics["loss"])
  for m in (2, 4):
    np.testing.assert_allclose(losses[m], losses[1], rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), params[m], params[1])
  # On 8 devices with 32 rows each strided microbatch still puts 32 / M / 8 rows on every device, so the
  # activations alive at once shrink with M (a plain reshape(M, B / M) grew them: 369k -> 425k bytes at M=4).
  assert temp_bytes[1] > temp_bytes[2] > temp_bytes[4], temp_bytes
