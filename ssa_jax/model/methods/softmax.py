"""Plain softmax attention (attention_kind 'softmax'): the kernel kernel_implementation picks, unchanged."""

from __future__ import annotations

import flax.linen as nn
import jax

from ssa_jax.model.config import ModelConfig
from ssa_jax.model.kernels import Visibility, attention_weights, causal_attention, weighted_values
from ssa_jax.model.methods.base import no_cache, no_flops

Array = jax.Array


def softmax_attention(q_BTHD: Array, k_BSKD: Array, v_BSKD: Array, seen: Visibility, cfg: ModelConfig) -> Array:
  """softmax(q k^T / sqrt(D)) v: the causal kernel in a full forward, else XLA through the explicit mask's rows
  (attention_weights, which ssa_jax.analysis.norms reads as well)."""
  if seen.mask_BTS is None:
    return causal_attention(q_BTHD, k_BSKD, v_BSKD, cfg, seen.segment_ids_BT)
  return weighted_values(attention_weights(q_BTHD, k_BSKD, seen.mask_BTS), v_BSKD)


class Softmax(nn.Module):
  """The default method: softmax_attention and nothing else."""

  cfg: ModelConfig
  layer_name = "softmax"  # the module's name in the attention layer (it has no parameters)
  softmax_rows = True  # its attention rows are softmax(q k^T / sqrt(D)) (ssa_jax.analysis.norms)
  cache_spec = staticmethod(no_cache)
  flops_per_token = staticmethod(no_flops)

  def __call__(self, x_BTd, q_BTHD, k_BSKD, v_BSKD, seen: Visibility, layer_index, state):
    del x_BTd, layer_index
    return softmax_attention(q_BTHD, k_BSKD, v_BSKD, seen, self.cfg), state
