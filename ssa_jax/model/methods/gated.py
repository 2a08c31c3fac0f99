"""Gated attention (Qiu et al., "Gated Attention for Large Language Models", NeurIPS 2025; Qwen3-Next).

Y' = Y * sigmoid(x W_g + b_g): Y the attention kernel's output (B, T, H, D) before the output projection, x the
block's normed input (the one q / k / v are projected from). config.model.attention_kind picks the gate's width:
'gated_head' one scalar per token and head (W_g: (d, H)), 'gated_element' one per token, head and head dim
(W_g: (d, H, D), the paper's recommended gate and Qwen3-Next's). The gate reads x alone, so KV-cache decoding
needs nothing cached for it. docs/methods.md has the parameters and what differs from the paper.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssa_jax.model.config import ModelConfig
from ssa_jax.model.kernels import Visibility
from ssa_jax.model.layers import compute_dtype
from ssa_jax.model.methods.base import method_param, no_cache
from ssa_jax.model.methods.softmax import softmax_attention

Array = jax.Array


def gate_shape(cfg: ModelConfig) -> tuple[tuple[int, ...], tuple[str, ...]]:
  """(gate features, their logical axes) per token: (H,) per head, (H, D) per element."""
  if cfg.attention_kind == "gated_head":
    return (cfg.num_heads,), ("heads",)
  return (cfg.num_heads, cfg.head_dim), ("heads", "head_dim")


def gate_flops_per_token(cfg: ModelConfig) -> float:
  """Training FLOPs a token of the gate's d x H ('gated_head') or d x H x D ('gated_element') kernel."""
  features, _ = gate_shape(cfg)
  return 6.0 * cfg.num_layers * cfg.d_model * math.prod(features)


class Gated(nn.Module):
  """attention_kind 'gated_head' / 'gated_element': softmax attention, its output Y times sigmoid(x W_g + b_g)
  (broadcast over D for the per-head gate), in Y's dtype. Its parameters sit under attn/output_gate.

  As Qwen3-Next (whose gate is the second half of each head's widened q_proj): W_g starts normal(init_std), as
  q's kernel does, so the gate starts near 0.5, not at 1; a bias exists when q has one (config.model.qkv_bias),
  starting at 0. The logits accumulate in float32 and the sigmoid runs in float32; the gate is then rounded to
  the compute dtype and multiplies out there, as Qwen3-Next does. Why not a bf16 sigmoid (Qwen3-Next's): a gate
  far below 0.5 is about exp(z), so rounding the logit z to bf16 first (absolute error up to |z| 2^-9) gives
  the gate a relative error of as much: at z = -8, 1.6%, on the near-closed gates that make the paper's gates
  sparse. The cost: in training the sigmoid's backward keeps a float32 gate, 4 bytes an element instead of 2.
  """

  cfg: ModelConfig
  layer_name = "output_gate"  # the module's name in the attention layer
  softmax_rows = True  # its attention rows are softmax(q k^T / sqrt(D)) (ssa_jax.analysis.norms)
  cache_spec = staticmethod(no_cache)
  flops_per_token = staticmethod(gate_flops_per_token)

  @nn.compact
  def __call__(self, x_BTd, q_BTHD, k_BSKD, v_BSKD, seen: Visibility, layer_index, state):
    del layer_index  # the gate reads this token's x alone: nothing cached, nothing per layer
    cfg = self.cfg
    out_BTHD = softmax_attention(q_BTHD, k_BSKD, v_BSKD, seen, cfg)
    features, axes = gate_shape(cfg)
    kernel = self.param("kernel", method_param(nn.initializers.normal(cfg.init_std), ("embed", *axes)),
                        (x_BTd.shape[-1], *features), jnp.float32)
    dtype = compute_dtype(cfg)
    logits = jax.lax.dot_general(x_BTd.astype(dtype), kernel.astype(dtype), (((x_BTd.ndim - 1,), (0,)), ((), ())),
                                 preferred_element_type=jnp.float32)  # (B, T, H) or (B, T, H, D)
    if cfg.qkv_bias:
      logits = logits + self.param("bias", method_param(nn.initializers.zeros, axes), features, jnp.float32)
    gate = jax.nn.sigmoid(logits).astype(out_BTHD.dtype)
    if cfg.attention_kind == "gated_head":
      gate = gate[..., None]
    return out_BTHD * gate, state
