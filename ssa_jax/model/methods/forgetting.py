"""Forgetting attention (Lin et al., "Forgetting Transformer: Softmax Attention with a Forget Gate", ICLR 2025).

Each token t and query head h has a forget gate f_th = sigmoid(w_f,h . x_t + b_f,h), x the block's normed input
(the one q / k / v are projected from). Query i's logit for key j <= i is decayed by the gates between them:
  o_i = sum_j softmax_j(q_i . k_j / sqrt(D) + c_i - c_j) v_j,   c_i = sum_{l <= i} log f_l,
so c_i - c_j = log prod_{j < l <= i} f_l (0 on the diagonal). Parameters per layer: w_f (d, H) starting
normal(init_std) and b_f (H) starting at 0, as the authors' code (zhixuan-lin/forgetting-transformer,
fgate_proj: nn.Linear(d, H, bias=True), normal(initializer_range) and zero bias) does for its data-dependent
gate: every gate starts near 0.5, a decay of about log 2 a token. The bias exists whatever config.model.qkv_bias.

What differs from the paper: RoPE stays on (the layer applies it before this module); the paper finds it optional
for FoX and its "FoX (LLaMA)" drops it. GQA is routed (head h reads KV head h // (H // K)); the authors' layer
asserts K = H. The "Pro" block's extras (QK-norm, output gate and norm, key / value shift) are not here.

Precision: c_j grows without bound along a row, so the decay is formed in float32 as the difference c_i - c_j and
added to float32 logits; it is never folded into bf16 q / k. log f is jax.nn.log_sigmoid of a float32 logit.

Every path computes c from log f by its own visibility: the full forward by a cumulative sum along the row (a
segment_ids_BT document is contiguous, so its differences are its own); explicit rows (packed or tree-shaped) by
mask_BTS @ log f, the sum over a token's ancestors including itself, whose differences are the path from j
(exclusive) to i (inclusive); the KV cache carries c per position (cache_spec) and continues it from the last
cached one.

Kernel: no fused kernel here takes a per-(i, j) decay (FoX's own is a Triton flash kernel), so on CPU, TPU and GPU
alike this runs XLA einsums with the (B, H, T, S) float32 logits materialized, as the explicit-mask path of
softmax attention does.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssa_jax.model.config import ModelConfig
from ssa_jax.model.kernels import Visibility, grouped_logits, masked_softmax, weighted_values
from ssa_jax.model.layers import compute_dtype
from ssa_jax.model.methods.base import method_param

Array = jax.Array

CUMULATIVE = "log_forget_cumsum_BSH"  # the cache's c per position (float32)


def forget_cache_spec(cfg: ModelConfig, batch: int, max_len: int) -> dict[str, jax.ShapeDtypeStruct]:
  """c per cached position and query head (float32: it grows without bound, see the module doc)."""
  return {CUMULATIVE: jax.ShapeDtypeStruct((batch, max_len, cfg.num_heads), jnp.float32)}


def forget_flops_per_token(cfg: ModelConfig) -> float:
  """Training FLOPs a token of the gate's d x H kernel, all layers."""
  return 6.0 * cfg.num_layers * cfg.d_model * cfg.num_heads


def cumulative_log_forget(log_f_BTH: Array, seen: Visibility, state: dict | None
                          ) -> tuple[Array, Array, dict | None]:
  """(c of the queries (B, T, H), c of the keys (B, S, H), the state with the new c written), float32."""
  if state is not None:  # KV cache: continue from the last cached position (0 before the first)
    c_BSH = state[CUMULATIVE]
    index = seen.cache_index
    last_B1H = jax.lax.dynamic_slice_in_dim(c_BSH, jnp.maximum(index - 1, 0), 1, axis=1)
    c_BTH = jnp.where(index > 0, last_B1H, 0.0) + jnp.cumsum(log_f_BTH, axis=1)
    c_BSH = jax.lax.dynamic_update_slice_in_dim(c_BSH, c_BTH, index, axis=1)
    return c_BTH, c_BSH, {**state, CUMULATIVE: c_BSH}
  if seen.mask_BTS is not None:  # packed / tree rows: the sum over each token's ancestors
    ancestors_BTS = jnp.broadcast_to(seen.mask_BTS, (log_f_BTH.shape[0], *seen.mask_BTS.shape[1:]))
    c_BTH = jnp.einsum("bts,bsh->bth", ancestors_BTS.astype(jnp.float32), log_f_BTH,
                       precision=jax.lax.Precision.HIGHEST)  # float32 exact: TPU's default would round to bf16
    return c_BTH, c_BTH, state
  c_BTH = jnp.cumsum(log_f_BTH, axis=1)
  return c_BTH, c_BTH, state


def forgetting_weights(q_BTHD: Array, k_BSKD: Array, c_BTH: Array, c_BSH: Array, mask_BTS: Array) -> Array:
  """softmax(q k^T / sqrt(D) + c_i - c_j) rows (B, H, T, S) where mask_BTS holds, float32 (GQA as
  kernels.attention_weights: head h = kv head * G + g reads KV head h // G)."""
  B, T, H, _ = q_BTHD.shape
  S, K = k_BSKD.shape[1], k_BSKD.shape[2]
  G = H // K
  c_query_BKGT1 = c_BTH.reshape(B, T, K, G).transpose(0, 2, 3, 1)[..., None]
  c_key_BKG1S = c_BSH.reshape(B, S, K, G).transpose(0, 2, 3, 1)[..., None, :]
  return masked_softmax(grouped_logits(q_BTHD, k_BSKD) + (c_query_BKGT1 - c_key_BKG1S), mask_BTS)


class Forgetting(nn.Module):
  """attention_kind 'forgetting': softmax attention whose logits are decayed by the product of the forget gates
  between query and key (module doc). Its parameters sit under attn/forget_gate; with a KV cache it carries c."""

  cfg: ModelConfig
  layer_name = "forget_gate"  # the module's name in the attention layer
  softmax_rows = False  # its rows are decayed, not softmax(q k^T / sqrt(D)) (ssa_jax.analysis.norms)
  cache_spec = staticmethod(forget_cache_spec)
  flops_per_token = staticmethod(forget_flops_per_token)

  @nn.compact
  def __call__(self, x_BTd, q_BTHD, k_BSKD, v_BSKD, seen: Visibility, layer_index, state):
    del layer_index  # the gate reads this token's x alone; nothing depends on depth
    log_f_BTH = self.log_forget(x_BTd)
    c_BTH, c_BSH, state = cumulative_log_forget(log_f_BTH, seen, state)
    probs_BHTS = forgetting_weights(q_BTHD, k_BSKD, c_BTH, c_BSH, seen.dense_mask(q_BTHD.shape[1]))
    return weighted_values(probs_BHTS, v_BSKD), state

  def log_forget(self, x_BTd: Array) -> Array:
    """log f = log_sigmoid(x w_f + b_f) (B, T, H), float32 (the matmul in the compute dtype)."""
    cfg = self.cfg
    kernel = self.param("kernel", method_param(nn.initializers.normal(cfg.init_std), ("embed", "heads")),
                        (x_BTd.shape[-1], cfg.num_heads), jnp.float32)
    bias = self.param("bias", method_param(nn.initializers.zeros, ("heads",)), (cfg.num_heads,), jnp.float32)
    dtype = compute_dtype(cfg)
    logits_BTH = jax.lax.dot_general(x_BTd.astype(dtype), kernel.astype(dtype), (((2,), (0,)), ((), ())),
                                     preferred_element_type=jnp.float32)
    return jax.nn.log_sigmoid(logits_BTH + bias)
