"""Tiny decoder configs of each family and random SSA temperatures, shared by the model and eval tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ssa_jax.model.config import ModelConfig, SSAConfig
from ssa_jax.model.decoder import TOKEN_FEATURE, Decoder, init_cache, uses_token_feature

FAMILY_EXTRAS = {
    "gpt2": dict(qkv_bias=True, out_bias=True, mlp_bias=True, tie_embeddings=True),
    "neox": dict(rotary_pct=0.25, parallel_residual=True, qkv_bias=True, out_bias=True, mlp_bias=True),
    "llama": dict(num_kv_heads=2, activation="silu"),
}


def tiny_config(family: str, max_seq_len: int = 32, **ssa) -> ModelConfig:
  """A 2-layer, 32-wide model of `family` (64-token vocabulary) with SSAConfig(**ssa)."""
  return ModelConfig(family=family, vocab_size=64, d_model=32, num_layers=2, num_heads=4, mlp_dim=48,
                     max_seq_len=max_seq_len, ssa=SSAConfig(**ssa), **FAMILY_EXTRAS[family]).validate()


def with_random_temperatures(params, seed: int = 0):
  """Every SSA temperature parameter drawn from N(0, 0.3^2) (their zero inits would make tau_tok = 0)."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      p: jnp.asarray(rng.normal(scale=0.3, size=v.shape), jnp.float32) if "/ssa_" in "/" + "/".join(p) else v  # names do in a test helper
      for p, v in flat.items()})


def random_buffers(cfg: ModelConfig, seed: int = 0) -> dict:
  """The 'buffers' collection: a frequency model's phi drawn from N(0, 1), as a counts file would give (its init
  is 0); empty for the other models."""
  if not uses_token_feature(cfg):
    return {}
  return {TOKEN_FEATURE: jnp.asarray(np.random.default_rng(seed).normal(size=cfg.vocab_size), jnp.float32)}


def cached_decode_logits(model: Decoder, params, tokens_BT: np.ndarray, max_len: int, prefill: int = 5):
  """(logits (B, T, V) from a KV cache: a multi-token prefill of `prefill` tokens, then one token at a time; the
  cache's final index)."""
  step = jax.jit(lambda p, t, c: model.apply({"params": p}, t, cache=c))
  cache = init_cache(model.config, batch_size=tokens_BT.shape[0], max_len=max_len)
  logits, cache = step(params, tokens_BT[:, :prefill], cache)
  pieces = [np.asarray(logits)]
  for t in range(prefill, tokens_BT.shape[1]):
    logits, cache = step(params, tokens_BT[:, t : t + 1], cache)
    pieces.append(np.asarray(logits))
  return np.concatenate(pieces, axis=1), int(cache.index)
