"""SSA attention against independent references: identity temperatures, and logit/value scaling written out."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ssa_jax.model.attention import SelectiveSelfAttention
from ssa_jax.model.kernels import attention_weights, weighted_values
from ssa_jax.model.config import ModelConfig, SSAConfig
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.params import init_variables

B, T = 2, 12


def _cfg(family="llama", **ssa):
  extra = dict(num_kv_heads=2, activation="silu", rope_theta=100.0) if family == "llama" else {}
  return ModelConfig(family=family, vocab_size=50, d_model=32, num_layers=2, num_heads=4, mlp_dim=48,
                     max_seq_len=32, ssa=SSAConfig(**ssa), **extra).validate()


def _randomise(params, pattern="/ssa_", scale=0.5, seed=1):
  """Random values for every leaf whose path contains `pattern` (zero-initialised weights included)."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      p: jnp.asarray(rng.normal(scale=scale, size=v.shape), jnp.float32) if pattern in "/".join(p) else v
      for p, v in flat.items()})


@pytest.mark.parametrize("token_kind", ["mlp", "shared", "frequency"])
def test_identity_temperatures_equal_vanilla(token_kind):
  # Token term at its zero init and no position term: tau = 1 + tanh(0) = 1 exactly.
  ssa_cfg = _cfg(enabled=True, token_kind=token_kind, key=True, position=False)
  vanilla_cfg = _cfg()
  ssa_variables = init_variables(ssa_cfg, jax.random.PRNGKey(0))  # phi (frequency) at its init, 0
  vanilla_params = init_variables(vanilla_cfg, jax.random.PRNGKey(0))["params"]
  # Same weights for everything the two models share.
  flat = traverse_util.flatten_dict(ssa_variables["params"])
  for p, v in traverse_util.flatten_dict(vanilla_params).items():
    flat[p] = v
  ssa_variables["params"] = traverse_util.unflatten_dict(flat)
  tokens = np.random.default_rng(0).integers(0, 50, (B, T))
  out_ssa = Decoder(ssa_cfg).apply(ssa_variables, tokens)
  out_vanilla = Decoder(vanilla_cfg).apply({"params": vanilla_params}, tokens)
  np.testing.assert_array_equal(np.asarray(out_ssa), np.asarray(out_vanilla))


# ------------------------------------------------------------------------------ the independent reference
def _gelu(x):
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _rope_ref(x_THD, theta):
  """Rotation of dimension pairs (i, i + D/2) by angle pos * theta^(-2i/D), written with complex numbers."""
  T_, _, D = x_THD.shape
  freqs = theta ** (-np.arange(D // 2) * 2.0 / D)
  z = (x_THD[..., : D // 2] + 1j * x_THD[..., D // 2 :]) * np.exp(1j * np.arange(T_)[:, None, None] * freqs)
  return np.concatenate([z.real, z.imag], axis=-1)


def _position_ref(p, ssa, component, n_T1):
  """The position term written out per kind (docs/ssa.md): 1 for k / v under a query-only kind."""
  if ssa.position_kind == "log":
    return 1.0 + np.log(n_T1) / (1.0 + np.exp(-p["alpha"][None]))
  if component != "q":
    return 1.0
  if ssa.position_kind == "yarn":  # YaRN's q and k factors 0.1 ln s + 1 together, on the logits; s read as n
    return (0.1 * np.log(n_T1) + 1.0) ** 2
  if ssa.position_kind == "llama4":  # transformers' Llama4 attention temperature tuning
    return np.log(np.floor(n_T1 / ssa.llama4_floor_scale) + 1.0) * 0.1 + 1.0
  raise ValueError(ssa.position_kind)


def _tau_ref(p, x_Td, proj_THD, ssa, T_, component="q"):
  """tanh(f(x)) + the position term, written out."""
  if ssa.token_kind == "mlp":
    f = _gelu(x_Td @ p["w1"]["kernel"] + p["w1"]["bias"]) @ p["w2"]["kernel"] + p["w2"]["bias"]
  elif ssa.weight_sharing_scope == "head":  # f_h = w_h . gelu(proj_h)
    f = (_gelu(proj_THD) * p["w"][None]).sum(-1)
  else:  # 'layer': f_g = sum over every head h and dim d of w[g, h, d] gelu(proj[h, d])
    gp = _gelu(proj_THD)
    f = np.stack([(gp * p["w"][g][None]).sum((-2, -1)) for g in range(p["w"].shape[0])], axis=-1)
  n = np.arange(1, T_ + 1, dtype=np.float64)[:, None]
  return np.tanh(f) + _position_ref(p, ssa, component, n)


def _attention_ref(params, x_Td, cfg):
  """Causal attention whose logits are multiplied row-wise by tau_q (column-wise by tau_k), values by tau_v."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  H, K, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  T_ = x_Td.shape[0]
  q = np.einsum("td,dhk->thk", x_Td, p["q"]["kernel"])
  k = np.einsum("td,dhk->thk", x_Td, p["k"]["kernel"])
  v = np.einsum("td,dhk->thk", x_Td, p["v"]["kernel"])
  ones = lambda n: np.ones((T_, n))
  tau_q = _tau_ref(p["ssa_q"], x_Td, q, cfg.ssa, T_, "q") if cfg.ssa.query else ones(H)
  tau_k = _tau_ref(p["ssa_k"], x_Td, k, cfg.ssa, T_, "k") if cfg.ssa.key else ones(K)
  tau_v = _tau_ref(p["ssa_v"], x_Td, v, cfg.ssa, T_, "v") if cfg.ssa.value else ones(K)
  q, k = _rope_ref(q, cfg.rope_theta), _rope_ref(k, cfg.rope_theta)
  out = np.zeros((T_, H, D))
  group = H // K
  for h in range(H):
    kv = h // group
    logits = (q[:, h] @ k[:, kv].T) / math.sqrt(D)
    logits = logits * tau_q[:, h][:, None] * tau_k[:, kv][None, :]
    logits = np.where(np.tril(np.ones((T_, T_), bool)), logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out[:, h] = probs @ (v[:, kv] * tau_v[:, kv][:, None])
  return np.einsum("thk,hkd->td", out, p["o"]["kernel"])


@pytest.mark.parametrize("token_kind,scope,key,position_kind", [
    ("mlp", "layer", False, "log"), ("shared", "layer", False, "log"), ("shared", "head", False, "log"),
    ("mlp", "layer", True, "log"),
    ("mlp", "layer", False, "yarn"),  # logits x (0.1 ln n + 1)^2 on top of the token term; v its token term only
    ("mlp", "layer", False, "llama4"),  # floor_scale 4: steps at n = 4, 8, 12 within the 12 positions
])
def test_random_temperatures_equal_logit_and_value_scaling(token_kind, scope, key, position_kind):
  cfg = _cfg(enabled=True, token_kind=token_kind, weight_sharing_scope=scope, key=key, position_kind=position_kind,
             llama4_floor_scale=4.0)
  attn = SelectiveSelfAttention(cfg)
  x = np.random.default_rng(0).normal(size=(B, T, cfg.d_model)).astype(np.float32)
  pos = np.broadcast_to(np.arange(T), (B, T))
  params = attn.init(jax.random.PRNGKey(0), x, pos)["params"]
  params = _randomise(jax.tree_util.tree_map(lambda a: getattr(a, "value", a), params, is_leaf=lambda a: hasattr(a, "value")))
  out, _ = attn.apply({"params": params}, x, pos)
  for b in range(B):
    np.testing.assert_allclose(np.asarray(out[b]), _attention_ref(params, x[b].astype(np.float64), cfg),
                               atol=2e-5, rtol=1e-4)


def test_explicit_mask_attention_equals_a_loop_over_heads_and_rows():
  """The XLA branch (packed rows, KV cache) and the analyses' rows: GQA head h reads KV head h // (H / K)."""
  rng = np.random.default_rng(4)
  T_, S, H, K, D = 5, 7, 4, 2, 8
  q, k, v = (rng.normal(size=shape) for shape in ((1, T_, H, D), (1, S, K, D), (1, S, K, D)))
  mask = rng.random((1, T_, S)) < 0.5
  mask[..., 0] = True  # every query sees a key
  probs = np.asarray(attention_weights(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), jnp.asarray(mask)))
  out = np.asarray(weighted_values(jnp.asarray(probs), jnp.asarray(v, jnp.float32)))
  for h in range(H):
    for t in range(T_):
      seen = np.flatnonzero(mask[0, t])
      logits = k[0, seen, h // (H // K)] @ q[0, t, h] / math.sqrt(D)
      row = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
      np.testing.assert_allclose(probs[0, h, t, seen], row, rtol=1e-5, atol=1e-6)
      np.testing.assert_array_equal(np.delete(probs[0, h, t], seen), 0.0)
      np.testing.assert_allclose(out[0, t, h], row @ v[0, seen, h // (H // K)], rtol=1e-5, atol=1e-5)
