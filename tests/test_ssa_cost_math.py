"""SSA's math is unchanged by how the step computes it: a tiny NeoX model's float32 logits (and their gradients)
against the forward written out from the spec (../shared/design/SSA.md) in jnp, for the base and weight-sharing
token terms on q, k and v."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssa_jax.model.decoder import Decoder
from ssa_jax.model.params import init_variables
from tests.tiny_models import tiny_config, with_random_temperatures

B, T = 2, 12
HI = jax.lax.Precision.HIGHEST
SCALE = 2.0  # the weights x SCALE: logits about 1.5, where float32 rounding stays below 1e-6


def _layer_norm(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def _rope(x_BTHD, rot, theta):
  """Rotate-half RoPE on the first `rot` dims: pair (i, i + rot/2) turned by n theta^(-2i/rot)."""
  half = rot // 2
  angle_T1A = jnp.arange(x_BTHD.shape[1], dtype=jnp.float32)[:, None, None] / theta ** (jnp.arange(half) * 2.0 / rot)
  x1, x2, rest = x_BTHD[..., :half], x_BTHD[..., half:rot], x_BTHD[..., rot:]
  cos, sin = jnp.cos(angle_T1A), jnp.sin(angle_T1A)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)


def _tau(p, x_BTd, proj_BTHD, ssa):
  """tau = tanh(f) + 1 + sigmoid(alpha) log n; f = W2 GeLU(W1 x) (base) or w . GeLU(proj) (weight sharing)."""
  if ssa.token_kind == "mlp":
    h = jax.nn.gelu(jnp.dot(x_BTd, p["w1"]["kernel"], precision=HI) + p["w1"]["bias"], approximate=False)
    f_BTH = jnp.dot(h, p["w2"]["kernel"], precision=HI) + p["w2"]["bias"]
  elif ssa.weight_sharing_scope == "head":
    f_BTH = (jax.nn.gelu(proj_BTHD, approximate=False) * p["w"]).sum(-1)
  else:
    f_BTH = jnp.einsum("bthd,ghd->btg", jax.nn.gelu(proj_BTHD, approximate=False), p["w"], precision=HI)
  log_n_T1 = jnp.log(jnp.arange(1, x_BTd.shape[1] + 1, dtype=jnp.float32))[:, None]
  return jnp.tanh(f_BTH) + 1.0 + jax.nn.sigmoid(p["alpha"]) * log_n_T1


def _attention(p, x_BTd, cfg):
  """q, k, v each times its own tau (a scalar per token and head), RoPE on q and k, causal softmax, out."""
  proj = {c: jnp.einsum("btd,dhk->bthk", x_BTd, p[c]["kernel"], precision=HI) + p[c]["bias"] for c in "qkv"}
  q, k, v = (proj[c] * _tau(p[f"ssa_{c}"], x_BTd, proj[c], cfg.ssa)[..., None] for c in "qkv")
  q, k = _rope(q, cfg.rotary_dim, cfg.rope_theta), _rope(k, cfg.rotary_dim, cfg.rope_theta)
  logits = jnp.einsum("bthd,bshd->bhts", q, k, precision=HI) / math.sqrt(cfg.head_dim)
  logits = jnp.where(jnp.tril(jnp.ones((T, T), bool)), logits, -jnp.inf)
  out = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, -1), v, precision=HI)
  return jnp.einsum("bthd,hde->bte", out, p["o"]["kernel"], precision=HI) + p["o"]["bias"]


def _reference_logits(params, tokens, cfg):
  """GPT-NeoX (parallel residual, tanh GeLU MLP, untied head) with SSA attention, written out."""
  x = params["embed"]["embedding"][tokens]
  for i in range(cfg.num_layers):
    p = params[f"layers_{i}"]
    h = jax.nn.gelu(jnp.dot(_layer_norm(x, p["mlp_norm"], cfg.norm_eps), p["mlp"]["up"]["kernel"], precision=HI)
                    + p["mlp"]["up"]["bias"], approximate=True)
    mlp = jnp.dot(h, p["mlp"]["down"]["kernel"], precision=HI) + p["mlp"]["down"]["bias"]
    x = x + _attention(p["attn"], _layer_norm(x, p["attn_norm"], cfg.norm_eps), cfg) + mlp
  return jnp.dot(_layer_norm(x, params["final_norm"], cfg.norm_eps), params["lm_head"]["kernel"], precision=HI)


def _model(token_kind, scope):
  cfg = tiny_config("neox", enabled=True, token_kind=token_kind, weight_sharing_scope=scope, query=True,
                    key=True, value=True)
  params = init_variables(cfg, jax.random.PRNGKey(0))["params"]
  params = jax.tree_util.tree_map(lambda a: getattr(a, "value", a), params, is_leaf=lambda a: hasattr(a, "value"))
  # Temperatures far from 1 (about 0.5 to 2.5) and weights large enough that the logits are O(1).
  params = with_random_temperatures(jax.tree_util.tree_map(lambda a: a * SCALE, params), seed=1)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T))
  return cfg, params, tokens


CASES = [("mlp", "layer"), ("shared", "layer"), ("shared", "head")]


@pytest.mark.parametrize("token_kind,scope", CASES)
def test_float32_logits_equal_the_written_out_formula(token_kind, scope):
  cfg, params, tokens = _model(token_kind, scope)
  got = np.asarray(Decoder(cfg).apply({"params": params}, tokens))
  want = np.asarray(_reference_logits(params, tokens, cfg))
  assert np.abs(want).max() > 1.0  # not a test of near-zero numbers
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("token_kind,scope", CASES)
def test_gradients_equal_the_written_out_formulas(token_kind, scope):
  # The step's backward (whatever it saves or recomputes) is the derivative of the same function.
  cfg, params, tokens = _model(token_kind, scope)
  cotangent = jnp.asarray(np.random.default_rng(2).normal(size=(B, T, cfg.vocab_size)), jnp.float32)
  loss = lambda f: lambda p: (f(p) * cotangent).sum()
  got = jax.grad(loss(lambda p: Decoder(cfg).apply({"params": p}, tokens)))(params)
  want = jax.grad(loss(lambda p: _reference_logits(p, tokens, cfg)))(params)
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
    scale = max(1.0, float(np.abs(w).max()))
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5 * scale, rtol=1e-4,
                               err_msg=jax.tree_util.keystr(path))
