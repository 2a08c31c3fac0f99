"""Forgetting attention (attention_kind 'forgetting', ssa_jax/model/methods/forgetting.py): the layer against
Lin et al.'s equations in numpy, KV-cache decoding, packed / tree rows and document masking against each sequence
alone, scanned vs unrolled layers, and parameter counts."""

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
from ssa_jax.model.methods.forgetting import Forgetting
from ssa_jax.model.params import init_variables, param_counts, stack_layers
from tiny_models import cached_decode_logits, tiny_config, with_random_temperatures


def _forgetting(family: str, **ssa) -> ModelConfig:
  return dataclasses.replace(tiny_config(family, **ssa), attention_kind="forgetting").validate()


def _with_random_gates(params, seed: int = 0):
  """Forget-gate kernels from N(0, 0.5^2) and biases from N(1, 1): gates spread over (0, 1), some near 1."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(params)
  mean_std = {"kernel": (0.0, 0.5), "bias": (1.0, 1.0)}
  return traverse_util.unflatten_dict({
      p: jnp.asarray(rng.normal(*mean_std[p[-1]], v.shape), jnp.float32) if Forgetting.layer_name in p else v
      for p, v in flat.items()})


def _model_params(cfg: ModelConfig, seed: int = 0):
  return _with_random_gates(with_random_temperatures(init_variables(cfg, jax.random.PRNGKey(seed))["params"]))


def _numpy_rope(x_BTHD: np.ndarray, positions_BT: np.ndarray, cfg: ModelConfig) -> np.ndarray:
  """Rotate-half RoPE on the first cfg.rotary_dim dims of each head (Su et al.; transformers' layout)."""
  rot = cfg.rotary_dim
  if rot == 0:
    return x_BTHD
  inv_freq = cfg.rope_theta ** (-np.arange(0, rot, 2, dtype=np.float64) / rot)
  angles = positions_BT[..., None, None] * np.concatenate([inv_freq, inv_freq])  # (B, T, 1, rot)
  x_rot, x_pass = x_BTHD[..., :rot], x_BTHD[..., rot:]
  x1, x2 = x_rot[..., : rot // 2], x_rot[..., rot // 2:]
  rotated = x_rot * np.cos(angles) + np.concatenate([-x2, x1], axis=-1) * np.sin(angles)
  return np.concatenate([rotated, x_pass], axis=-1)


def _numpy_forgetting_layer(p, x_BTd: np.ndarray, taus: dict, cfg: ModelConfig) -> np.ndarray:
  """Lin et al.'s equations: f_t = sigmoid(w_f x_t + b_f) per head; o_i = sum_j softmax_j(q_i k_j / sqrt(D) +
  log F_ij) v_j, F_ij = prod_{l=j+1}^{i} f_l (j <= i); then the output projection. q / k / v: projections, RoPE,
  the SSA temperatures `taus` (taken from the layer: tested elsewhere)."""
  f64 = lambda name: {k: np.asarray(v, np.float64) for k, v in p[name].items()}  # noqa: E731
  x = x_BTd.astype(np.float64)
  B, T, _ = x.shape
  positions = np.broadcast_to(np.arange(T, dtype=np.float64), (B, T))
  proj = {}
  for c in ("q", "k", "v"):
    w = f64(c)
    proj[c] = np.einsum("btd,dhe->bthe", x, w["kernel"]) + w.get("bias", 0.0)
  proj["q"], proj["k"] = _numpy_rope(proj["q"], positions, cfg), _numpy_rope(proj["k"], positions, cfg)
  for c, tau in taus.items():
    proj[c] = proj[c] * np.asarray(tau, np.float64)[..., None]
  g = f64(Forgetting.layer_name)
  f_BTH = 1.0 / (1.0 + np.exp(-(np.einsum("btd,dh->bth", x, g["kernel"]) + g["bias"])))
  H, K, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  y_BTHD = np.zeros((B, T, H, D))
  for b, h, i in np.ndindex(B, H, T):
    kv = h // (H // K)
    decay = np.array([np.log(np.prod(f_BTH[b, j + 1:i + 1, h])) for j in range(i + 1)])
    logits = proj["k"][b, :i + 1, kv] @ proj["q"][b, i, h] / np.sqrt(D) + decay
    probs = np.exp(logits - logits.max())
    y_BTHD[b, i, h] = probs / probs.sum() @ proj["v"][b, :i + 1, kv]
  o = f64("o")
  return np.einsum("bthe,hed->btd", y_BTHD, o["kernel"]) + o.get("bias", 0.0)


@pytest.mark.parametrize("family,ssa", [("gpt2", {}), ("llama", dict(enabled=True, token_kind="mlp", key=True))],
                         ids=["gpt2-biases", "llama-gqa-rope-ssa"])
def test_layer_equals_the_papers_equations_in_numpy(family, ssa):
  cfg = _forgetting(family, **ssa)
  x_BTd = np.random.default_rng(1).normal(size=(2, 7, cfg.d_model)).astype(np.float32)
  layer = SelectiveSelfAttention(cfg)
  positions_BT = jnp.broadcast_to(jnp.arange(7), (2, 7))
  params = nn.meta.unbox(layer.init(jax.random.PRNGKey(0), x_BTd, positions_BT)["params"])
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(scale=0.3, size=a.shape), jnp.float32), params)
  params = _with_random_gates(params)
  (out, _), state = layer.apply({"params": params}, x_BTd, positions_BT, mutable=["intermediates"])
  taus = {name[len("tau_"):]: v[0] for name, v in state.get("intermediates", {}).items()}
  assert set(taus) == ({"q", "k", "v"} if ssa else set())
  assert params[Forgetting.layer_name]["kernel"].shape == (32, 4)
  np.testing.assert_allclose(np.asarray(out), _numpy_forgetting_layer(params, x_BTd, taus, cfg), atol=1e-4,
                             rtol=1e-4)


def _open_gates(params):
  """Every forget gate near 1 (kernel 0, bias 30): forgetting attention becomes plain softmax attention."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      p: (jnp.full_like(v, 30.0) if p[-1] == "bias" else jnp.zeros_like(v)) if Forgetting.layer_name in p else v
      for p, v in flat.items()})


def test_kv_cache_decoding_matches_the_full_forward():
  cfg = _forgetting("llama", enabled=True, token_kind="mlp", key=True)
  model, params = Decoder(cfg), _model_params(cfg)
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 12))
  full_fn = jax.jit(lambda p, t: model.apply({"params": p}, t))
  full = np.asarray(full_fn(params, tokens))
  cached, index = cached_decode_logits(model, params, tokens, max_len=16)
  assert index == 12
  np.testing.assert_allclose(cached, full, atol=2e-5, rtol=1e-5)
  assert np.abs(np.asarray(full_fn(_open_gates(params), tokens)) - full).max() > 1e-2  # the gates act


def test_scanned_and_unrolled_layers_agree_with_and_without_a_cache():
  cfg = _forgetting("neox")  # partial RoPE, biases, parallel residual
  params = _model_params(cfg)
  scanned_cfg, scanned_params = dataclasses.replace(cfg, scan_layers=True), stack_layers(params, cfg.num_layers)
  tokens = np.random.default_rng(5).integers(0, 64, (2, 10))
  unrolled = np.asarray(jax.jit(Decoder(cfg).apply)({"params": params}, tokens))
  scanned = np.asarray(jax.jit(Decoder(scanned_cfg).apply)({"params": scanned_params}, tokens))
  np.testing.assert_allclose(scanned, unrolled, atol=1e-5, rtol=1e-5)
  cached, _ = cached_decode_logits(Decoder(scanned_cfg), scanned_params, tokens, max_len=12, prefill=4)
  np.testing.assert_allclose(cached, unrolled, atol=2e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def llama_rows():
  """(params, a jitted forward taking positions, mask_BTT or segment_ids_BT) of a Llama (GQA, RoPE) model."""
  cfg = _forgetting("llama")
  model = Decoder(cfg)
  forward = jax.jit(lambda p, t, pos=None, mask=None, seg=None: model.apply(
      {"params": p}, t, pos, mask_BTT=mask, segment_ids_BT=seg))
  return _model_params(cfg), forward


def _each_alone(params, forward, sequences: list[np.ndarray]) -> list[np.ndarray]:
  """Each sequence's logits alone: one batch right-padded to 8 (causal, so padding changes nothing before it)."""
  batch = np.stack([np.pad(s, (0, 8 - len(s))) for s in sequences])
  logits = np.asarray(forward(params, batch))
  return [logits[i, :len(s)] for i, s in enumerate(sequences)]


def test_a_packed_row_and_document_masking_equal_each_sequence_alone(llama_rows):
  params, forward = llama_rows
  rng = np.random.default_rng(2)
  a, b = rng.integers(0, 64, 8), rng.integers(0, 64, 3)
  segment_1T = jnp.asarray([[1] * 8 + [2] * 3])
  positions_1T = jnp.asarray([list(range(8)) + list(range(3))])
  row = np.concatenate([a, b])[None]
  expected = np.concatenate(_each_alone(params, forward, [a, b]))
  packed = forward(params, row, positions_1T, mask=tree_mask(segment_1T, jnp.zeros_like(segment_1T)))
  np.testing.assert_allclose(np.asarray(packed)[0], expected, atol=2e-5, rtol=1e-5)
  documents = forward(params, row, positions_1T, seg=segment_1T)
  np.testing.assert_allclose(np.asarray(documents)[0], expected, atol=2e-5, rtol=1e-5)


def test_a_tree_row_equals_each_branch_with_its_context_alone(llama_rows):
  # One context, two continuations after it in the same row: a token of the second branch sees the context and
  # its own branch, so its decay must run along that path only, not through the first branch laid out between.
  params, forward = llama_rows
  rng = np.random.default_rng(4)
  context, first, second = rng.integers(0, 64, 5), rng.integers(0, 64, 3), rng.integers(0, 64, 3)
  branch_1T = jnp.asarray([[0] * 5 + [1] * 3 + [2] * 3])
  positions_1T = jnp.asarray([list(range(8)) + list(range(5, 8))])
  row = np.concatenate([context, first, second])[None]
  tree = np.asarray(forward(params, row, positions_1T, mask=tree_mask(jnp.ones_like(branch_1T), branch_1T)))[0]
  with_first, with_second = _each_alone(params, forward, [np.concatenate([context, first]),
                                                          np.concatenate([context, second])])
  np.testing.assert_allclose(tree[:8], with_first, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(tree[8:], with_second[5:], atol=2e-5, rtol=1e-5)


def test_parameter_counts_and_cache_spec():
  ssa = dict(enabled=True, token_kind="shared")
  softmax, forgetting = param_counts(tiny_config("neox", **ssa)), param_counts(_forgetting("neox", **ssa))
  per_layer = 32 * 4 + 4  # w_f (d, H) and b_f (H), whatever qkv_bias says
  assert forgetting["attention_method_params"] == 2 * per_layer
  assert forgetting["params"] == softmax["params"] + 2 * per_layer
  assert param_counts(_forgetting("llama"))["attention_method_params"] == 2 * per_layer  # llama: no qkv bias
  cfg = _forgetting("llama")
  spec = Forgetting.cache_spec(cfg, 3, 16)
  assert [(s.shape, s.dtype) for s in spec.values()] == [((3, 16, 4), jnp.float32)]
  assert Forgetting.flops_per_token(cfg) == 6 * 2 * 32 * 4
