"""What every attention method (config.model.attention_kind, docs/methods.md) shares: the box of its parameters
and the contract its module keeps.

A method is a flax module built as `Method(cfg, name=...)` and called, after SSA's temperatures and RoPE, as
`method(x_BTd, q_BTHD, k_BSKD, v_BSKD, seen, layer_index, state) -> (out_BTHD, state)`:
  x_BTd        the block's normed input (the one q / k / v are projected from)
  seen         ssa_jax.model.kernels.Visibility: which keys each query sees
  layer_index  int32 scalar, 0-based (traced under nn.scan)
  state        None in a full forward; with a KV cache the method's own cached arrays (their shapes from
               `cache_spec`), already holding every earlier position, returned updated with the new ones.
The output (B, T, H, D) goes to the layer's output projection. Each method class also states, as class
attributes: `layer_name` (its module's name in the layer, where its parameters sit), `softmax_rows` (whether its
attention rows are plain softmax(q k^T / sqrt(D)) rows, which ssa_jax.analysis.norms rebuilds), and, as static
methods, `cache_spec(cfg, batch, max_len)` (its cached arrays, {} for none) and `flops_per_token(cfg)` (training
FLOPs a token of its own matmuls, for MFU).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from ssa_jax.model.config import ModelConfig


class MethodParam(nn.LogicallyPartitioned):
  """A variable an attention method (config.model.attention_kind other than 'softmax') adds, boxed with its
  logical axes; ssa_jax.model.params.param_counts reads these boxes from an abstract init, not names."""


def method_param(init: nn.initializers.Initializer, axes: tuple[str, ...]):
  """`init` returning its value in a MethodParam box (as nn.with_logical_partitioning does with its own)."""
  return lambda *args, **kwargs: MethodParam(init(*args, **kwargs), axes)


def no_cache(cfg: ModelConfig, batch: int, max_len: int) -> dict[str, jax.ShapeDtypeStruct]:
  """The cache_spec of a method that caches nothing beyond the layer's keys and values."""
  del cfg, batch, max_len
  return {}


def no_flops(cfg: ModelConfig) -> float:
  """The flops_per_token of a method without matmuls of its own."""
  del cfg
  return 0.0
