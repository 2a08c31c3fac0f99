"""attention_kind 'leviathan' (Leviathan et al.'s selective attention, ssa_jax.model.methods.leviathan): against
the paper's equations in numpy and x-transformers' selective_attn, KV-cache decoding, packed / tree rows and
document masking against each sequence alone, scanned layers, and its (zero) parameter count."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import traverse_util
from x_transformers.attend import selective_attn

from ssa_jax.evaluate.scoring import tree_mask
from ssa_jax.model.attention import SelectiveSelfAttention
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.kernels import Visibility
from ssa_jax.model.methods.leviathan import Leviathan
from ssa_jax.model.params import init_variables, param_counts, stack_layers
from tiny_models import cached_decode_logits, tiny_config, with_random_temperatures


def _leviathan(family: str, **ssa) -> ModelConfig:
  return dataclasses.replace(tiny_config(family, **ssa), attention_kind="leviathan")


def _with_sharp_logits(params, seed: int = 0):
  """q / k kernels drawn from N(0, 0.25^2): head 0's logits of a few units, so that F moves the rows (at the
  init's 0.02 scale ReLU(L_0) and F are near 0 and the method is near softmax)."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      p: jnp.asarray(rng.normal(scale=0.25, size=v.shape), jnp.float32) if p[-2:] in (("q", "kernel"), ("k", "kernel"))
      else v for p, v in flat.items()})


def _numpy_selective(q_BTHD, k_BTKD, v_BTKD) -> np.ndarray:
  """The paper's pseudo-code (its Figure), causal, float64; GQA: query head h reads KV head h // (H // K)."""
  q, k, v = (np.asarray(a, np.float64) for a in (q_BTHD, k_BTKD, v_BTKD))
  H, K, T, D = q.shape[2], k.shape[2], q.shape[1], q.shape[3]
  k, v = np.repeat(k, H // K, axis=2), np.repeat(v, H // K, axis=2)
  logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(D)
  logits = np.where(np.tril(np.ones((T, T), bool)), logits, -np.inf)
  s = np.maximum(logits[:, 0], 0.0)  # head 0 selects
  s[..., 0] = 0.0  # never mask <BOS>
  s = (1.0 - np.eye(T)) * s  # nor oneself
  s = np.roll(s, 1, axis=-2)
  s[:, 0, :] = 0.0  # a token's own row acts on later tokens only
  logits = logits - np.cumsum(s, axis=-2)[:, None]
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bhts,bshd->bthd", probs, v)


def _x_transformers_selective(q_BTHD, k_BTKD, v_BTKD) -> np.ndarray:
  """x-transformers' Attend with selective=True, step by step: logits, causal fill, selective_attn, softmax."""
  q, k, v = (torch.as_tensor(np.asarray(a, np.float64)).transpose(1, 2) for a in (q_BTHD, k_BTKD, v_BTKD))
  G = q.shape[1] // k.shape[1]
  k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
  sim = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
  T = sim.shape[-1]
  sim = sim.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -torch.finfo(sim.dtype).max)
  out = selective_attn(sim).softmax(-1) @ v
  return out.transpose(1, 2).numpy()


def _random_qkv(seed: int, B=2, T=9, H=4, K=2, D=8):
  rng = np.random.default_rng(seed)
  return (rng.normal(scale=1.5, size=(B, T, H, D)).astype(np.float32),
          rng.normal(scale=1.5, size=(B, T, K, D)).astype(np.float32),
          rng.normal(size=(B, T, K, D)).astype(np.float32))


def _method(cfg: ModelConfig, q, k, v, seen: Visibility = Visibility(), state=None):
  return jax.jit(lambda *a: Leviathan(cfg).apply({}, None, *a, seen, jnp.int32(0), state))(q, k, v)


def test_the_method_equals_the_papers_equations_and_x_transformers_with_gqa():
  cfg = _leviathan("llama")  # H = 4 query heads on K = 2 KV heads
  q, k, v = _random_qkv(0)
  out, state = _method(cfg, q, k, v)
  assert state is None
  expected = _numpy_selective(q, k, v)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(_x_transformers_selective(q, k, v), expected, atol=1e-10)
  plain = jax.nn.dot_product_attention(q, k, v, is_causal=True)  # softmax attention, no F
  assert np.abs(np.asarray(plain) - expected).max() > 0.1  # F moves the rows


def _numpy_gpt2_layer(p, x_BTd: np.ndarray) -> np.ndarray:
  """GPT-2's attention layer (no RoPE), its projections in float64 around _numpy_selective."""
  f = lambda name: {k: np.asarray(v, np.float64) for k, v in p[name].items()}  # noqa: E731
  x = x_BTd.astype(np.float64)
  q, k, v = (np.einsum("btd,dhe->bthe", x, w["kernel"]) + w["bias"] for w in (f("q"), f("k"), f("v")))
  o = f("o")
  return np.einsum("bthe,hed->btd", _numpy_selective(q, k, v), o["kernel"]) + o["bias"]


def test_the_attention_layer_equals_the_papers_equations_in_numpy():
  cfg = _leviathan("gpt2")
  x_BTd = np.random.default_rng(1).normal(size=(2, 11, cfg.d_model)).astype(np.float32)
  layer = SelectiveSelfAttention(cfg)
  positions_BT = jnp.broadcast_to(jnp.arange(11), (2, 11))
  params = nn.meta.unbox(layer.init(jax.random.PRNGKey(0), x_BTd, positions_BT)["params"])
  assert set(params) == {"q", "k", "v", "o"}  # no parameters of its own
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(scale=0.3, size=a.shape), jnp.float32), params)
  out, _ = jax.jit(layer.apply)({"params": params}, x_BTd, positions_BT)
  np.testing.assert_allclose(np.asarray(out), _numpy_gpt2_layer(params, x_BTd), atol=1e-4, rtol=1e-4)


def _decoder_params(cfg: ModelConfig):
  return _with_sharp_logits(with_random_temperatures(init_variables(cfg, jax.random.PRNGKey(0))["params"]))


def test_kv_cache_decoding_equals_the_full_forward_with_ssa():
  cfg = _leviathan("llama", enabled=True, token_kind="mlp", key=True)  # GQA: head 0 reads KV head 0
  model, params = Decoder(cfg), _decoder_params(cfg)
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 12))
  full = _logits(model, params, tokens)
  cached, index = cached_decode_logits(model, params, tokens, max_len=16)
  assert index == 12
  np.testing.assert_allclose(cached, full, atol=2e-5, rtol=1e-5)


def _logits(model: Decoder, params, tokens_BT, positions_BT=None, **kw) -> np.ndarray:
  return np.asarray(jax.jit(lambda p, t, pos: model.apply({"params": p}, t, pos, **kw))(params, tokens_BT,
                                                                                         positions_BT))


def test_a_packed_tree_row_equals_each_sequence_alone():
  # One row: a context C shared by two continuations A and B (a tree: A never sees B), then another sequence E,
  # then padding. Each must match its own sequence alone: C + A, C + B, E.
  cfg = _leviathan("llama", enabled=True, token_kind="shared")
  model, params = Decoder(cfg), _decoder_params(cfg)
  rng = np.random.default_rng(3)
  c, a, b, e = (rng.integers(0, cfg.vocab_size, n) for n in (5, 4, 3, 6))
  tokens = np.concatenate([c, a, b, e, [0, 0]])[None]
  positions = np.concatenate([np.arange(9), np.arange(5, 8), np.arange(6), [0, 0]])[None]
  segment = np.array([[1] * 12 + [2] * 6 + [0] * 2])
  branch = np.array([[0] * 5 + [1] * 4 + [2] * 3 + [0] * 8])
  packed = _logits(model, params, tokens, positions, mask_BTT=tree_mask(jnp.asarray(segment), jnp.asarray(branch)))
  # Alone, each padded at its end to 9 tokens (the padding comes after: causal rows do not see it).
  alone = _logits(model, params, np.stack([np.concatenate([c, a]), np.concatenate([c, b, [0]]),
                                           np.concatenate([e, [0, 0, 0]])]))
  np.testing.assert_allclose(packed[0, :9], alone[0], atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(packed[0, 9:12], alone[1, 5:8], atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(packed[0, 12:18], alone[2, :6], atol=2e-5, rtol=1e-5)


def test_document_masking_equals_each_document_alone():
  cfg = _leviathan("neox", enabled=True, token_kind="shared")
  model, params = Decoder(cfg), _decoder_params(cfg)
  rng = np.random.default_rng(4)
  docs = [rng.integers(0, cfg.vocab_size, n) for n in (7, 5, 4)]
  tokens = np.concatenate(docs)[None]
  positions = np.concatenate([np.arange(len(d)) for d in docs])[None]
  segments = np.concatenate([np.full(len(d), i) for i, d in enumerate(docs)])[None]
  packed = _logits(model, params, tokens, positions, segment_ids_BT=jnp.asarray(segments))
  alone = _logits(model, params, np.stack([np.pad(d, (0, 7 - len(d))) for d in docs]))  # padded at the end
  starts = np.cumsum([0] + [len(d) for d in docs])
  for i, doc in enumerate(docs):
    np.testing.assert_allclose(packed[0, starts[i]:starts[i + 1]], alone[i, :len(doc)], atol=2e-5, rtol=1e-5)


def test_scanned_layers_equal_unrolled_ones_and_decode_from_the_cache():
  cfg = _leviathan("neox", enabled=True, token_kind="shared")  # partial RoPE, parallel residual
  params = _decoder_params(cfg)
  scfg, sparams = dataclasses.replace(cfg, scan_layers=True), stack_layers(params, cfg.num_layers)
  tokens = np.random.default_rng(5).integers(0, cfg.vocab_size, (2, 10))
  full = _logits(Decoder(cfg), params, tokens)
  np.testing.assert_allclose(_logits(Decoder(scfg), sparams, tokens), full, atol=2e-5, rtol=1e-5)
  cached, _ = cached_decode_logits(Decoder(scfg), sparams, tokens, max_len=13, prefill=3)
  np.testing.assert_allclose(cached, full, atol=2e-5, rtol=1e-5)


def test_the_cache_holds_each_keys_masked_sum():
  cfg = _leviathan("llama")
  q, k, v = _random_qkv(6, B=1, T=6)
  spec = Leviathan.cache_spec(cfg, 1, 6)
  state = {name: jnp.zeros(s.shape, s.dtype) for name, s in spec.items()}
  causal = Visibility(jnp.tril(jnp.ones((1, 6, 6), bool)), cache_index=jnp.int32(0))
  _, state = _method(cfg, q, k, v, causal, state)
  logits_0 = np.einsum("td,sd->ts", q[0, :, 0], k[0, :, 0]) / np.sqrt(8)
  by_hand = np.where(np.tril(np.ones((6, 6), bool), -1), np.maximum(logits_0, 0), 0)[:, 1:].sum(0)  # BOS exempt
  np.testing.assert_allclose(np.asarray(state["mask_sums_BS"])[0], np.concatenate([[0.0], by_hand]), rtol=1e-5)


def test_parameter_counts_are_zero_beside_ssa():
  # No parameters, counted by hand: 0; the model's total is softmax's, SSA's own count unchanged.
  ssa = dict(enabled=True, token_kind="shared")
  softmax = param_counts(tiny_config("neox", **ssa))
  selective = param_counts(_leviathan("neox", **ssa))
  assert selective["attention_method_params"] == 0
  assert selective["params"] == softmax["params"] and selective["ssa_params"] == softmax["ssa_params"] > 0
