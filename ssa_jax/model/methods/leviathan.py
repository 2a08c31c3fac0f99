"""Selective attention (Leviathan, Kalman, Matias, "Selective Attention Improves Transformer", ICLR 2025;
attention_kind 'leviathan'). A different method from this codebase's SSA (Selective Self-Attention), which it
composes with: SSA's temperatures and RoPE are already in q and k when this module sees them.

A token may mark an earlier token as no longer needed, and every later token then attends to it less:
  L_h = q_h k_h^T / sqrt(D)                 (float32; head h reads KV head h // G under GQA)
  S_kj = ReLU(L_0,kj)  where query k sees key j, j != k and j is not its sequence's first token; else 0
  F_ij = sum over k < i (the strict ancestors of i: the keys i sees, itself excluded) of S_kj
  out_h = softmax(L_h - F, masked as usual) v_h
Head 0's logits choose (its key is KV head 0 under GQA); F, one (T, S) matrix per row, is subtracted from every
head's logits. There are no parameters, so no init. Gradients flow through F into head 0's q and k, as in the
paper's code.

The three visibility cases (ssa_jax.model.kernels.Visibility):
  full forward  F is the exclusive cumulative sum of S over query rows: S is 0 where a query does not see the key,
                so with segment_ids_BT the other documents' rows add nothing to a visible entry. First tokens:
                position 0, and with segment_ids_BT each token whose id differs from the previous token's.
  explicit mask tree-shaped rows share a context but not each other's branches, so F = strict_mask @ S (the
                cumulative sum would count a sibling branch's rows). A key is a sequence's first token when its
                own row sees only itself.
  KV cache      the state holds, per key, the sum of S over every query so far ((B, max_len) float32). New rows'
                F = those sums + the exclusive cumulative sum within the new rows; the new rows' S is then added.
                The first token is absolute position 0.

Differs from the paper: its context pruning (dropping keys whose F passes a threshold, with a memory-budget loss
term) is left out: the cache keeps every key. BOS: the paper zeroes column 0; here each packed sequence's first
token is exempt, so a packed row equals its sequences alone.

Kernel: XLA on CPU, TPU and GPU alike, with the (B, H, T, S) float32 logits materialized. F needs head 0's
logits as a full (T, S) matrix before any head's softmax: splash takes no such bias, and cuDNN's fused kernel
would take F only as a bias in the compute dtype (bf16: F rounded), with head 0's logits still computed outside
it. config.model.attention_impl is therefore not read.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssa_jax.model.config import ModelConfig
from ssa_jax.model.kernels import Visibility, grouped_logits, masked_softmax, weighted_values
from ssa_jax.model.methods.base import no_flops

Array = jax.Array

SUMS = "mask_sums_BS"  # the cached per-key sums of S over every query so far


def selection_cache_spec(cfg: ModelConfig, batch: int, max_len: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Per layer: how much every query so far has masked each key (float32, zeros before the first token)."""
  del cfg
  return {SUMS: jax.ShapeDtypeStruct((batch, max_len), jnp.float32)}


def first_keys(seen: Visibility, mask_BTS: Array) -> Array:
  """(B or 1, S) bool: the keys that start a sequence, which no query masks."""
  if seen.mask_BTS is None and seen.segment_ids_BT is not None:  # documents: contiguous runs of one id
    ids_BT = seen.segment_ids_BT
    return jnp.pad(ids_BT[:, 1:] != ids_BT[:, :-1], ((0, 0), (1, 0)), constant_values=True)
  if seen.mask_BTS is None or seen.cache_index is not None:
    # Position 0, stated, not read off the causal mask: the TPU compiler aborted on that mask's row sums
    # (libtpu, v5p-8 megacore, Pythia-160M at 8 rows a device).
    return (jnp.arange(mask_BTS.shape[-1]) == 0)[None]
  return mask_BTS.sum(-1) == 1  # explicit rows (S = T): key j's own row sees only itself


def selection(logits_BTS: Array, mask_BTS: Array, first_BS: Array, query_pos_T: Array) -> Array:
  """S: ReLU of head 0's logits where the query sees the key, the key is neither the query itself (absolute
  position query_pos_T) nor a first token; 0 elsewhere. float32 (B, T, S)."""
  key_pos_S = jnp.arange(logits_BTS.shape[-1])
  itself_TS = key_pos_S[None, :] == query_pos_T[:, None]
  kept_BTS = mask_BTS & ~itself_TS[None] & ~first_BS[:, None, :]
  return jnp.where(kept_BTS, jax.nn.relu(logits_BTS), 0.0)


def exclusive_cumsum(s_BTS: Array) -> Array:
  """sum over rows k < i of s_BTS[:, k] (shifted, not cumsum - s, which would cancel in float32)."""
  summed_BTS = jnp.cumsum(s_BTS, axis=1)
  return jnp.pad(summed_BTS[:, :-1], ((0, 0), (1, 0), (0, 0)))


def ancestor_sums(mask_BTT: Array, s_BTS: Array) -> Array:
  """sum of s_BTS's rows over each query's strict ancestors (the keys it sees, itself excluded): tree rows."""
  T = mask_BTT.shape[-1]
  strict_BTT = (mask_BTT & ~jnp.eye(T, dtype=bool)[None]).astype(jnp.float32)
  # HIGHEST: TPU's default float32 matmul rounds its inputs to bfloat16.
  return jnp.matmul(strict_BTT, s_BTS, precision=jax.lax.Precision.HIGHEST)  # B of the mask may be 1


def masked_amounts(s_BTS: Array, seen: Visibility, state: dict | None) -> tuple[Array, dict | None]:
  """(F (B, T, S), the updated state): what each query's ancestors masked of each key."""
  if state is not None:
    sums_BS = state[SUMS]
    return sums_BS[:, None, :] + exclusive_cumsum(s_BTS), {**state, SUMS: sums_BS + s_BTS.sum(1)}
  if seen.mask_BTS is None:
    return exclusive_cumsum(s_BTS), state
  return ancestor_sums(seen.mask_BTS, s_BTS), state


class Leviathan(nn.Module):
  """attention_kind 'leviathan': softmax(L - F) v, F what earlier tokens masked through head 0 (module doc)."""

  cfg: ModelConfig
  layer_name = "selective"  # the module's name in the attention layer (it has no parameters)
  softmax_rows = False  # its rows are softmax(L - F), not softmax(q k^T / sqrt(D)) (ssa_jax.analysis.norms)
  cache_spec = staticmethod(selection_cache_spec)
  flops_per_token = staticmethod(no_flops)  # no weights; F is a cumulative sum, not a matmul, in training

  def __call__(self, x_BTd, q_BTHD, k_BSKD, v_BSKD, seen: Visibility, layer_index, state):
    del x_BTd, layer_index  # the same rule in every layer
    T = q_BTHD.shape[1]
    logits_BKGTS = grouped_logits(q_BTHD, k_BSKD)
    mask_BTS = seen.dense_mask(T)
    start = 0 if seen.cache_index is None else seen.cache_index
    s_BTS = selection(logits_BKGTS[:, 0, 0], mask_BTS, first_keys(seen, mask_BTS), start + jnp.arange(T))
    f_BTS, state = masked_amounts(s_BTS, seen, state)
    probs_BHTS = masked_softmax(logits_BKGTS - f_BTS[:, None, None], mask_BTS)
    return weighted_values(probs_BHTS, v_BSKD), state
