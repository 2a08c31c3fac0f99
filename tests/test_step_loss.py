"""The chunked next-token loss: equal to the full-logits loss, bf16 logits close to fp32, less train-step memory."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from ssa_jax.errors import ConfigError
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.params import init_variables, lm_head_kernel, stack_layers
from ssa_jax.train.loss import chunked_cross_entropy
from ssa_jax.train.sections import train_section
from ssa_jax.train.state import TrainState
from ssa_jax.train.step import make_train_step, next_token_loss
from tiny_models import tiny_config, with_random_temperatures

SEQ = 24


def _tokens(batch: int, seq: int, vocab: int, seed: int = 0) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (batch, seq + 1)), jnp.int32)


def _reference_loss(model: Decoder, params, tokens_BT1):
  """The decoder's own (B, T, V) float32 logits and optax's cross-entropy: no chunking anywhere."""
  logits_BTV = model.apply({"params": params}, tokens_BT1[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, tokens_BT1[:, 1:]).mean()


# neox: untied head, chunks of 5 positions (24 padded to 25); gpt2: head tied to the embedding, chunks of 8.
@pytest.mark.parametrize("family,chunk", [("neox", 5), ("gpt2", 8)])
def test_chunked_loss_and_gradients_equal_the_full_logits(family, chunk):
  cfg = tiny_config(family, enabled=True, token_kind="mlp")
  model = Decoder(cfg)
  params = with_random_temperatures(init_variables(cfg, jax.random.PRNGKey(0))["params"])
  tokens = _tokens(4, SEQ, cfg.vocab_size)
  ref_loss, ref_grads = jax.jit(jax.value_and_grad(lambda p: _reference_loss(model, p, tokens)))(params)
  (loss, stats), grads = jax.jit(jax.value_and_grad(
      lambda p: next_token_loss(model, {"params": p}, tokens, loss_chunk_size=chunk), has_aux=True))(params)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  assert set(stats) == {"tau_q_mean", "tau_q_std", "tau_v_mean", "tau_v_std"}  # the sown temperatures still arrive

  # atol: 1e-6 of the largest gradient. A gradient that is zero in exact arithmetic (the key bias: softmax
  # ignores a per-query shift) is summation noise, 1e-11, in both.
  atol = 1e-6 * max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(ref_grads))

  def close(path, g, ref):
    np.testing.assert_allclose(g, ref, rtol=1e-6, atol=atol, err_msg=jax.tree_util.keystr(path))

  jax.tree_util.tree_map_with_path(close, grads, ref_grads)


def test_bf16_logits_loss_is_within_1e3_of_fp32_logits():
  cfg = dataclasses.replace(tiny_config("neox"), vocab_size=1024, dtype="bfloat16")
  model = Decoder(cfg)
  params = init_variables(cfg, jax.random.PRNGKey(0))["params"]
  # A trained model's logits spread over several units (at init their std is 0.1): scale the head to a std of 3.
  params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 30.0
  tokens = _tokens(8, 64, cfg.vocab_size)
  loss_bf16 = float(jax.jit(lambda p: next_token_loss(model, {"params": p}, tokens, loss_chunk_size=16)[0])(params))
  # The same bf16 hidden states through a float32 head at full precision.
  x_BTd = jax.jit(lambda p: model.apply({"params": p}, tokens[:, :-1], return_hidden=True))(params)
  logits_fp32 = jnp.einsum("btd,dv->btv", x_BTd.astype(jnp.float32), lm_head_kernel(params, cfg),
                           precision=jax.lax.Precision.HIGHEST)
  assert float(jnp.std(logits_fp32)) > 1.0
  loss_fp32 = float(optax.softmax_cross_entropy_with_integer_labels(logits_fp32, tokens[:, 1:]).mean())
  # The decoder's own head also gives bf16 logits (then cast to float32): chunking changes nothing else.
  np.testing.assert_allclose(loss_bf16, float(jax.jit(lambda p: _reference_loss(model, p, tokens))(params)),
                             rtol=1e-5)
  print(f"bf16-logits loss {loss_bf16:.6f}, fp32-logits loss {loss_fp32:.6f}, "
        f"difference {loss_bf16 - loss_fp32:+.2e}")
  assert abs(loss_bf16 - loss_fp32) < 1e-3


def test_negative_chunk_size_names_the_field():
  train = base.get_config("tiny", "ssa", mode="demo").train
  train.loss_chunk_size = -1
  with pytest.raises(ConfigError, match=r"^config\.train\.loss_chunk_size: expected an int >= 0, got -1"):
    train_section(train)


def test_chunked_cross_entropy_pads_masked_positions():
  # Two rows of three positions, chunks of two: the padded fourth position must not count.
  x_BTd = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 4)), jnp.float32)
  head_dV = jnp.asarray(np.random.default_rng(2).normal(size=(4, 5)), jnp.float32)
  targets_BT = jnp.asarray([[0, 1, 2], [3, 4, 0]], jnp.int32)
  logits = np.einsum("btd,dv->btv", np.asarray(x_BTd, np.float64), np.asarray(head_dV, np.float64))
  logz = np.log(np.exp(logits).sum(-1))
  expected = np.sum(logz - np.take_along_axis(logits, np.asarray(targets_BT)[..., None], -1)[..., 0])
  got = chunked_cross_entropy(x_BTd, head_dV, targets_BT, 2, jnp.float32)  # the sum; callers divide
  np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_chunking_cuts_the_train_steps_temp_memory():
  cfg = dataclasses.replace(tiny_config("neox"), vocab_size=8192)  # the head dominates: 8 x 64 x 8192 logits
  tx = optax.sgd(0.1)
  params = init_variables(cfg, jax.random.PRNGKey(0))["params"]
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, buffers={}, opt_state=tx.init(params))
  batch = {"tokens": _tokens(8, 64, cfg.vocab_size)}

  def temp_bytes(chunk: int) -> int:
    step = jax.jit(make_train_step(Decoder(cfg), tx, lambda s: 0.1, 1, loss_chunk_size=chunk))
    return step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes

  full, chunked = temp_bytes(0), temp_bytes(8)
  logits_bytes = 8 * 64 * cfg.vocab_size * 4  # one float32 copy of the whole logits: 16.8 MB
  print(f"train-step temp memory: whole logits {full:,} B, chunks of 8 positions {chunked:,} B")
  assert full > logits_bytes
  assert chunked < full - logits_bytes


def test_scanned_layers_give_the_same_loss_and_temperature_statistics():
  cfg = tiny_config("neox", enabled=True, token_kind="mlp")
  scanned_cfg = dataclasses.replace(cfg, scan_layers=True)
  params = with_random_temperatures(init_variables(cfg, jax.random.PRNGKey(0))["params"])
  tokens = _tokens(2, 16, cfg.vocab_size)
  loss_of = lambda c: jax.jit(lambda p: next_token_loss(Decoder(c), {"params": p}, tokens, loss_chunk_size=8))
  loss, stats = loss_of(cfg)(params)
  scanned_loss, scanned_stats = loss_of(scanned_cfg)(stack_layers(params, cfg.num_layers))
  np.testing.assert_allclose(scanned_loss, loss, rtol=1e-6)
  assert set(scanned_stats) == set(stats)
  for k in stats:
    assert scanned_stats[k].shape == (cfg.num_layers,)
    np.testing.assert_allclose(scanned_stats[k], stats[k], rtol=1e-5, err_msg=k)
