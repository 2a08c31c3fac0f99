"""Differential attention (Ye et al., "Differential Transformer", ICLR 2025; attention_kind 'differential').

Each differential head j subtracts two softmax maps, then normalises its output:
  A_j = softmax(q_{2j} k^T / sqrt(D)) - lambda softmax(q_{2j+1} k^T / sqrt(D))
  lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init,
  lambda_init = 0.8 - 0.6 exp(-0.3 l)   (l the 0-based layer index; the paper writes l - 1 with l 1-based)
  out_j = (1 - lambda_init) RMSNorm(A_j V_j)   (over the 2D-wide value of head j, learned weight)
The layer's projections are unchanged (H query, K key, K value heads of width D): as in the authors' code
(microsoft/unilm Diff-Transformer/multihead_diffattn.py), they are read as H/2 differential heads, query
sub-heads (2j, 2j+1) giving head j's two maps, and values of width 2D (v reshaped (B, S, K/2, 2D): value head m
is v heads 2m, 2m+1 side by side). GQA as theirs: query sub-head i reads key head i // G and head j value head
j // G, G = H / K. Head j's 2D-wide output is the o projection's heads 2j, 2j+1, so the parameter count is
plain softmax's plus 4 D + 2 D a layer.

Parameters (per layer, float32): lambda_q1, lambda_k1, lambda_q2, lambda_k2 of shape (D,), shared by the
heads, init normal(0, 0.1) (as the authors); subln_scale (2D,), init ones. The norm's eps is
config.model.norm_eps (default 1e-5, the authors' subln eps), the one the model's other norms use.

Kernels. A V = softmax(L1) V - lambda softmax(L2) V, so a full forward runs the causal kernel on H query
heads with 2D-wide values, value head m // 2 repeated for key head m (a kernel pairs each key head with one
value head; this costs a (B, S, K, 2D) copy, twice v), then subtracts the paired outputs in float32:
  TPU, splash: one call (its kernels take a value width other than q / k's).
  GPU, cuDNN: jax.nn.dot_product_attention requires v's shape to equal k's, so two calls, one per D-wide half
    of the values: q k^T and the softmax are computed twice (the attention logits' FLOPs doubled).
  XLA (CPU; float32 on GPU): the explicit path below, as cheap as XLA's own kernel (which also materialises
    the (B, H, T, S) logits) and with one q k^T, where two XLA kernel calls would materialise two.
Explicit masks (packed / tree rows, a KV cache) run in XLA: attention_weights' (B, H, T, S) float32 rows,
A in float32, then A V with one matmul per differential head. Nothing is cached beyond k and v.

What differs from the paper: RoPE is the family's (rotate-half), not the authors' interleaved one; the kernel
path subtracts the two maps' outputs (rounded to the compute dtype by the kernel) where the authors' reference
subtracts the maps in float32 first (their flash versions subtract outputs, as here).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssa_jax.model.config import ModelConfig
from ssa_jax.model.kernels import (Visibility, attention_weights, causal_attention, kernel_implementation,
                                   weighted_values)
from ssa_jax.model.methods.base import method_param, no_cache, no_flops

Array = jax.Array

LAMBDA_INIT_STD = 0.1  # the authors' init of lambda_q1, lambda_k1, lambda_q2, lambda_k2


def lambda_init(layer_index: Array | int) -> Array:
  """0.8 - 0.6 exp(-0.3 l), l the 0-based layer index (traced under nn.scan)."""
  return 0.8 - 0.6 * jnp.exp(-0.3 * jnp.asarray(layer_index, jnp.float32))


def paired_values(v_BSKD: Array) -> Array:
  """v read as K/2 value heads of width 2D: (B, S, K/2, 2D), head m = v heads 2m and 2m+1 side by side."""
  B, S, K, D = v_BSKD.shape
  return v_BSKD.reshape(B, S, K // 2, 2 * D)


def explicit_difference(q_BTHD: Array, k_BSKD: Array, v_BSKD: Array, mask_BTS: Array, lam: Array) -> Array:
  """A V (B, T, H/2, 2D) through materialised float32 rows: A = p_{2j} - lambda p_{2j+1}, then one matmul."""
  B, T, H, _ = q_BTHD.shape
  probs_BHTS = attention_weights(q_BTHD, k_BSKD, mask_BTS)
  probs_BJ2TS = probs_BHTS.reshape(B, H // 2, 2, T, -1)
  diff_BJTS = probs_BJ2TS[:, :, 0] - lam * probs_BJ2TS[:, :, 1]
  return weighted_values(diff_BJTS, paired_values(v_BSKD)).astype(jnp.float32)


def kernel_maps(q_BTHD: Array, k_BSKD: Array, v_BSKD: Array, cfg: ModelConfig, segment_ids_BT: Array | None,
                impl: str) -> Array:
  """softmax(q_i k^T / sqrt(D)) V_{i // 2G} for every query sub-head i, (B, T, H, 2D), by the causal kernel:
  one splash call on 2D-wide values, else (cuDNN, and jax's XLA kernel) one call per D-wide half."""
  wide_BSK2D = jnp.repeat(paired_values(v_BSKD), 2, axis=2)  # key head m's value: paired head m // 2
  if impl == "splash":
    return causal_attention(q_BTHD, k_BSKD, wide_BSK2D, cfg, segment_ids_BT)
  D = q_BTHD.shape[-1]
  halves = [causal_attention(q_BTHD, k_BSKD, wide_BSK2D[..., s], cfg, segment_ids_BT)
            for s in (slice(0, D), slice(D, 2 * D))]
  return jnp.concatenate(halves, axis=-1)


def kernel_difference(q_BTHD: Array, k_BSKD: Array, v_BSKD: Array, cfg: ModelConfig, segment_ids_BT: Array | None,
                      lam: Array, impl: str) -> Array:
  """A V (B, T, H/2, 2D) in float32 from the causal kernel's two maps a head: out_{2j} - lambda out_{2j+1}."""
  B, T, H, D = q_BTHD.shape
  maps_BTJ2E = kernel_maps(q_BTHD, k_BSKD, v_BSKD, cfg, segment_ids_BT, impl).reshape(B, T, H // 2, 2, 2 * D)
  maps_BTJ2E = maps_BTJ2E.astype(jnp.float32)
  return maps_BTJ2E[:, :, :, 0] - lam * maps_BTJ2E[:, :, :, 1]


class Differential(nn.Module):
  """attention_kind 'differential': the module docstring's A V per differential head, RMSNorm over its 2D
  width times (1 - lambda_init), returned as the layer's (B, T, H, D) heads in v's dtype."""

  cfg: ModelConfig
  layer_name = "differential"  # the module's name in the attention layer
  softmax_rows = False  # its rows are a difference of two maps (ssa_jax.analysis.norms leaves them out)
  cache_spec = staticmethod(no_cache)  # A is recomputed from the cached k and v
  flops_per_token = staticmethod(no_flops)  # lambda and the norm are no matmuls over tokens

  @nn.compact
  def __call__(self, x_BTd, q_BTHD, k_BSKD, v_BSKD, seen: Visibility, layer_index, state):
    del x_BTd
    cfg = self.cfg
    B, T, H, D = q_BTHD.shape
    lam = self._lambda(layer_index, D)
    impl = kernel_implementation(cfg)
    if seen.mask_BTS is None and impl != "xla":
      av_BTJE = kernel_difference(q_BTHD, k_BSKD, v_BSKD, cfg, seen.segment_ids_BT, lam, impl)
    else:
      av_BTJE = explicit_difference(q_BTHD, k_BSKD, v_BSKD, seen.dense_mask(T), lam)
    scale = self.param("subln_scale", method_param(nn.initializers.ones, (None,)), (2 * D,), jnp.float32)
    normed_BTJE = av_BTJE * jax.lax.rsqrt(jnp.mean(jnp.square(av_BTJE), axis=-1, keepdims=True) + cfg.norm_eps)
    out_BTJE = normed_BTJE * scale * (1.0 - lambda_init(layer_index))
    return out_BTJE.astype(v_BSKD.dtype).reshape(B, T, H, D), state

  def _lambda(self, layer_index, D: int) -> Array:
    """exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init, a float32 scalar."""
    init = method_param(nn.initializers.normal(LAMBDA_INIT_STD), ("head_dim",))
    vec = {name: self.param(name, init, (D,), jnp.float32)
           for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")}
    # Sums of products, not jnp.dot: TPU's default matmul precision would round these float32 vectors to bf16.
    dot = lambda a, b: jnp.sum(vec[a] * vec[b])  # noqa: E731
    return jnp.exp(dot("lambda_q1", "lambda_k1")) - jnp.exp(dot("lambda_q2", "lambda_k2")) + lambda_init(layer_index)
