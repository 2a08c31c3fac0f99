"""Differential attention (attention_kind 'differential', ssa_jax/model/methods/differential.py): the layer against
Ye et al.'s equations in numpy, the causal kernels' paths against the explicit rows, KV-cache decoding, packed /
tree rows and document masking, scanned layers, parameter counts."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ssa_jax.evaluate.scoring import tree_mask
from ssa_jax.model.attention import SelectiveSelfAttention
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.kernels import Visibility
from ssa_jax.model.methods.differential import Differential, explicit_difference, kernel_difference
from ssa_jax.model.params import init_variables, param_counts, stack_layers
from tiny_models import cached_decode_logits, tiny_config, with_random_temperatures

LAMBDAS = ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")


def _differential(cfg: ModelConfig, **changes) -> ModelConfig:
  return dataclasses.replace(cfg, attention_kind="differential", **changes).validate()


def _with_random_method_params(params, seed: int = 0):
  """lambda vectors from N(0, 0.3^2) (lambda far from lambda_init) and the norm's weight from N(1, 0.3^2)."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      p: jnp.asarray(rng.normal(loc=1.0 if p[-1] == "subln_scale" else 0.0, scale=0.3, size=v.shape), jnp.float32)
      if "differential" in p else v for p, v in flat.items()})


def _rope(x_BTHD: np.ndarray, theta: float) -> np.ndarray:
  """Rotate-half RoPE over the whole head, positions 0..T-1."""
  T, D = x_BTHD.shape[1], x_BTHD.shape[-1]
  angles_TA = np.arange(T)[:, None] * theta ** (-np.arange(0, D, 2) / D)[None]
  cos, sin = (np.concatenate([f(angles_TA)] * 2, -1)[None, :, None] for f in (np.cos, np.sin))
  x1, x2 = x_BTHD[..., : D // 2], x_BTHD[..., D // 2 :]
  return x_BTHD * cos + np.concatenate([-x2, x1], -1) * sin


def _numpy_differential_layer(p, x_BTd: np.ndarray, cfg: ModelConfig, layer: int) -> np.ndarray:
  """The paper's equations (Llama's attention: no biases, full RoPE). Differential head j has query sub-heads
  2j, 2j+1 and a 2D-wide value (value projection heads read in pairs); GQA as the authors' code: query sub-head
  i reads key head i // G, head j value pair j // G, G = H / K."""
  f = lambda name: np.asarray(p[name]["kernel"], np.float64)  # noqa: E731
  m = {name: np.asarray(v, np.float64) for name, v in p["differential"].items()}
  x = x_BTd.astype(np.float64)
  H, K, D, T = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, x.shape[1]
  q, k = (_rope(np.einsum("btd,dhe->bthe", x, f(n)), cfg.rope_theta) for n in ("q", "k"))
  v = np.einsum("btd,dhe->bthe", x, f("v")).reshape(x.shape[0], T, K // 2, 2 * D)
  G = H // K
  logits_BHTS = np.stack([np.einsum("bte,bse->bts", q[:, :, i], k[:, :, i // G]) for i in range(H)], 1) / np.sqrt(D)
  logits_BHTS = np.where(np.tril(np.ones((T, T), bool)), logits_BHTS, -np.inf)
  probs = np.exp(logits_BHTS - logits_BHTS.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  lam_init = 0.8 - 0.6 * np.exp(-0.3 * layer)
  lam = np.exp(m["lambda_q1"] @ m["lambda_k1"]) - np.exp(m["lambda_q2"] @ m["lambda_k2"]) + lam_init
  heads = []
  for j in range(H // 2):
    o_BTE = np.einsum("bts,bse->bte", probs[:, 2 * j] - lam * probs[:, 2 * j + 1], v[:, :, j // G])
    o_BTE = o_BTE / np.sqrt(np.mean(o_BTE ** 2, -1, keepdims=True) + cfg.norm_eps) * m["subln_scale"]
    heads.append((1 - lam_init) * o_BTE)
  return np.concatenate(heads, -1) @ f("o").reshape(H * D, -1)


@pytest.mark.parametrize("heads,kv_heads,layer", [(4, 4, 0), (8, 4, 3)], ids=["mha-layer0", "gqa-layer3"])
def test_layer_equals_the_papers_equations_in_numpy(heads, kv_heads, layer):
  cfg = ModelConfig(family="llama", vocab_size=64, d_model=32, num_layers=4, num_heads=heads, num_kv_heads=kv_heads,
                    head_dim=8, mlp_dim=48, max_seq_len=32, attention_kind="differential").validate()
  x_BTd = np.random.default_rng(1).normal(size=(2, 7, 32)).astype(np.float32)
  layer_fn = SelectiveSelfAttention(cfg)
  positions_BT = jnp.broadcast_to(jnp.arange(7), (2, 7))
  params = nn.meta.unbox(layer_fn.init(jax.random.PRNGKey(0), x_BTd, positions_BT)["params"])
  rng = np.random.default_rng(2)
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(scale=0.3, size=a.shape), jnp.float32), params)
  assert {n: a.shape for n, a in params["differential"].items()} == {**{n: (8,) for n in LAMBDAS},
                                                                      "subln_scale": (16,)}
  out, _ = layer_fn.apply({"params": params}, x_BTd, positions_BT, layer_index=jnp.int32(layer))
  np.testing.assert_allclose(np.asarray(out), _numpy_differential_layer(params, x_BTd, cfg, layer),
                             atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", ["xla", "splash"])
def test_causal_kernel_paths_equal_the_explicit_rows(impl):
  # 'xla' here runs jax.nn.dot_product_attention once per half of the values: the cuDNN path's code. 'splash'
  # runs the Pallas kernel in interpret mode with 2D-wide values. Both with packed documents, values and grads.
  cfg = dataclasses.replace(tiny_config("llama"), attention_kind="differential", attention_impl=impl)
  B, T, H, K, D = 2, 20, 8, 4, 8  # two value pairs: a wrong pairing of key and value heads shows
  ks = jax.random.split(jax.random.PRNGKey(3), 3)
  q, k, v = (jax.random.normal(key, (B, T, n, D)) for key, n in zip(ks, (H, K, K)))
  segment_ids_BT = jnp.asarray(np.repeat([[1, 2], [1, 1]], [9, 11], axis=1))
  mask_BTS = Visibility(segment_ids_BT=segment_ids_BT).dense_mask(T)
  lam = jnp.float32(0.7)
  w = jnp.cos(jnp.arange(B * T * H // 2 * 2 * D, dtype=jnp.float32)).reshape(B, T, H // 2, 2 * D)

  def out_and_grads(fn):
    def loss(q, k, v):
      out = fn(q, k, v)
      return (out * w).sum(), out

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)

  (_, got), got_grads = out_and_grads(lambda q, k, v: kernel_difference(q, k, v, cfg, segment_ids_BT, lam, impl))
  (_, want), want_grads = out_and_grads(lambda q, k, v: explicit_difference(q, k, v, mask_BTS, lam))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)
  for g, h in zip(got_grads, want_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(h), atol=2e-5, rtol=1e-5)


def test_kv_cache_decoding_matches_the_full_forward_with_ssa():
  # Llama: GQA (4 query sub-heads, 2 key heads, 1 value pair); SSA's temperatures on q, k and v.
  cfg = _differential(tiny_config("llama", enabled=True, token_kind="mlp", key=True, value=True))
  model = Decoder(cfg)
  params = _with_random_method_params(with_random_temperatures(init_variables(cfg, jax.random.PRNGKey(0))["params"]))
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 12))
  full = np.asarray(jax.jit(model.apply)({"params": params}, tokens))
  cached, index = cached_decode_logits(model, params, tokens, max_len=16)
  assert index == 12
  np.testing.assert_allclose(cached, full, atol=2e-5, rtol=1e-5)


def _logits(model: Decoder, params, rows, positions=None, **kwargs) -> np.ndarray:
  """float32 logits of token rows (B, T) under jit (positions default 0..T-1)."""
  positions = None if positions is None else jnp.asarray(positions)
  return np.asarray(jax.jit(lambda p, t, pos: model.apply({"params": p}, t, pos, **kwargs))(
      params, jnp.asarray(rows), positions))


def test_packed_and_tree_rows_and_document_masking_equal_each_sequence_alone():
  # Rows of 11 tokens throughout (one compile a kind of call). A sequence alone: its row's causal prefix.
  cfg = _differential(tiny_config("llama"))
  model = Decoder(cfg)
  params = _with_random_method_params(init_variables(cfg, jax.random.PRNGKey(0))["params"])
  a, b, context, left, right = (np.arange(n) + s for n, s in ((5, 3), (6, 20), (4, 1), (3, 40), (2, 50)))
  filler = lambda row: np.concatenate([row, np.full(11 - len(row), 7)])  # noqa: E731
  alone = _logits(model, params, np.stack([filler(s) for s in (a, b, np.r_[context, left], np.r_[context, right])]))
  # Packed: a then b, positions restarting. Tree: context, then two branches that see it but not each other.
  rows = np.stack([np.r_[a, b], filler(np.r_[context, left, right])])
  positions = np.stack([np.r_[np.arange(5), np.arange(6)], np.r_[np.arange(7), 4 + np.arange(2), 0, 0]])
  segments = np.stack([np.repeat([1, 2], [5, 6]), np.repeat([1, 2], [9, 2])])
  branches = np.stack([np.zeros(11, int), np.repeat([0, 1, 2, 0], [4, 3, 2, 2])])
  masked = _logits(model, params, rows, positions, mask_BTT=tree_mask(jnp.asarray(segments), jnp.asarray(branches)))
  documents = _logits(model, params, rows[:1], positions[:1], segment_ids_BT=jnp.asarray(segments[:1]))[0]
  for got in (masked[0], documents):
    np.testing.assert_allclose(got[:5], alone[0, :5], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(got[5:], alone[1, :6], atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(masked[1, :7], alone[2, :7], atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(masked[1, 7:9], alone[3, 4:6], atol=2e-5, rtol=1e-5)


def test_scanned_layers_equal_unrolled_ones():
  cfg = _differential(tiny_config("llama"))  # 2 layers: lambda_init 0.2, then 0.36
  params = _with_random_method_params(init_variables(cfg, jax.random.PRNGKey(0))["params"])
  tokens = np.random.default_rng(4).integers(0, 64, (2, 9))
  unrolled = Decoder(cfg).apply({"params": params}, tokens)  # eager: each layer's index a concrete int32
  scanned_cfg = dataclasses.replace(cfg, scan_layers=True)
  scanned = jax.jit(Decoder(scanned_cfg).apply)({"params": stack_layers(params, 2)}, tokens)
  np.testing.assert_allclose(np.asarray(scanned), np.asarray(unrolled), atol=2e-5, rtol=1e-5)


def test_parameter_counts_and_nothing_cached_beyond_k_and_v():
  ssa = dict(enabled=True, token_kind="shared")
  softmax = param_counts(tiny_config("llama", **ssa))
  diff_cfg = _differential(tiny_config("llama", **ssa))
  diff = param_counts(diff_cfg)
  D, L = diff_cfg.head_dim, diff_cfg.num_layers
  assert diff["attention_method_params"] == L * (4 * D + 2 * D) == 96  # four lambda vectors, the norm's weight
  assert diff["params"] == softmax["params"] + diff["attention_method_params"]
  assert diff["ssa_params"] == softmax["ssa_params"] > 0
  assert Differential.cache_spec(diff_cfg, 2, 16) == {} and Differential.flops_per_token(diff_cfg) == 0.0
