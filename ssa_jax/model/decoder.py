"""Decoder: one block class for GPT-2, GPT-NeoX (Pythia) and Llama; the families differ by config switches."""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ssa_jax.model.attention import LayerCache, SelectiveSelfAttention
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.layers import Mlp, Norm, compute_dtype
from ssa_jax.model.methods import method_class

Array = jax.Array


BUFFERS = "buffers"  # the variable collection of fixed arrays that are never trained
TOKEN_FEATURE = "token_feature"  # the frequency token term's phi table, in BUFFERS


def uses_token_feature(cfg: ModelConfig) -> bool:
  """Whether the model holds the fixed token feature phi (the 'frequency' token term is on)."""
  return cfg.ssa.enabled and cfg.ssa.token and cfg.ssa.token_kind == "frequency"


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer plus the number of positions already written (shared by the batch)."""

  layers: tuple[LayerCache, ...] | LayerCache  # one per layer; with scan_layers one whose arrays are (L, ...)
  index: Array  # int32 scalar

  @property
  def max_len(self) -> int:
    first = self.layers if isinstance(self.layers, LayerCache) else self.layers[0]
    return first.k_BSKD.shape[-3]


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype=None) -> KVCache:
  """An empty cache for `max_len` positions (prompt plus generated tokens), laid out as the model's layers."""
  dtype = dtype or compute_dtype(cfg)
  shape = (batch_size, max_len, cfg.num_kv_heads, cfg.head_dim)
  method_spec = method_class(cfg).cache_spec(cfg, batch_size, max_len)
  layer = lambda *lead: LayerCache(
      jnp.zeros((*lead, *shape), dtype), jnp.zeros((*lead, *shape), dtype),
      {name: jnp.zeros((*lead, *spec.shape), spec.dtype) for name, spec in method_spec.items()})
  layers = layer(cfg.num_layers) if cfg.scan_layers else tuple(layer() for _ in range(cfg.num_layers))
  return KVCache(layers, jnp.zeros((), jnp.int32))


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Block(nn.Module):
  """Pre-norm transformer block; sequential (GPT-2, Llama) or parallel (GPT-NeoX) residual."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTd, positions_BT, feature_BT=None, cache=None, cache_index=None, mask_BTT=None,
               segment_ids_BT=None, layer_index=0):
    cfg = self.cfg
    attn_BTd, cache = SelectiveSelfAttention(cfg, name="attn")(
        Norm(cfg, name="attn_norm")(x_BTd), positions_BT, feature_BT, cache, cache_index, mask_BTT, segment_ids_BT,
        layer_index)
    mlp_in_BTd = x_BTd if cfg.parallel_residual else x_BTd + attn_BTd
    return x_BTd + attn_BTd + Mlp(cfg, name="mlp")(Norm(cfg, name="mlp_norm")(mlp_in_BTd)), cache


class Decoder(nn.Module):
  """Token ids (B, T) -> float32 logits (B, T, vocab_size); with a KVCache, also the updated cache."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens_BT: Array, positions_BT: Array | None = None, cache: KVCache | None = None,
               mask_BTT: Array | None = None, return_hidden: bool = False, segment_ids_BT: Array | None = None):
    """`positions_BT`: absolute positions (default 0..T-1, or after the cache's). `mask_BTT` (bool, query t
    sees key s) replaces the causal mask, for rows that pack several sequences (evaluation); with it,
    `positions_BT` must restart at each sequence so that RoPE, learned positions and SSA's log(n) are right.
    `segment_ids_BT` (int): packed training windows (ssa_jax.model.documents), each token attending to its own
    document only through the causal kernel (splash takes segment ids); positions must restart likewise.
    `return_hidden`: return the final-normed hidden states x_BTd (compute dtype) instead of the logits, for
    losses that apply the LM head (`lm_head_kernel`) chunk by chunk."""
    cfg = self.config
    dtype = compute_dtype(cfg)
    B, T = tokens_BT.shape
    cache_index = None if cache is None else cache.index
    if positions_BT is None:
      start = 0 if cache is None else cache.index
      positions_BT = jnp.broadcast_to(start + jnp.arange(T, dtype=jnp.int32), (B, T))

    embed = nn.Embed(
        cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=jnp.float32,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("vocab", "embed")),
        name="embed")
    x_BTd = embed(tokens_BT)
    if cfg.learned_positions:
      x_BTd = x_BTd + nn.Embed(
          cfg.max_seq_len, cfg.d_model, dtype=dtype, param_dtype=jnp.float32,
          embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.01), (None, "embed")),
          name="pos_embed")(positions_BT)

    feature_BT = None
    if uses_token_feature(cfg):
      # phi is a fixed corpus statistic: a buffer, outside the trained params. It starts at 0 here: the training
      # side fills it from config.model.ssa.feature_path (ssa_jax.train.state.create_state), a checkpoint or an
      # export restores it.
      phi_V = self.variable(BUFFERS, TOKEN_FEATURE, lambda: nn.LogicallyPartitioned(
          jnp.zeros((cfg.vocab_size,), jnp.float32), ("vocab",))).value
      feature_BT = phi_V[tokens_BT]

    block_cls = Block
    if cfg.remat != "none" and cache is None:
      # Under scan the loop boundary already keeps XLA from merging the recomputation away (no CSE barrier).
      block_cls = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      scanned = nn.scan(
          block_cls, variable_axes={"params": 0, "intermediates": 0}, split_rngs={"params": True},
          in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast, nn.broadcast, nn.broadcast, 0),
          length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      x_BTd, new_layers = scanned(cfg, name="layers")(
          x_BTd, positions_BT, feature_BT, None if cache is None else cache.layers, cache_index, mask_BTT,
          segment_ids_BT, jnp.arange(cfg.num_layers, dtype=jnp.int32))
    else:
      new_layers = ()
      for i in range(cfg.num_layers):
        x_BTd, layer_cache = block_cls(cfg, name=f"layers_{i}")(
            x_BTd, positions_BT, feature_BT, None if cache is None else cache.layers[i], cache_index, mask_BTT,
            segment_ids_BT, jnp.int32(i))
        new_layers += (layer_cache,)

    x_BTd = Norm(cfg, name="final_norm")(x_BTd)
    head = embed.attend if cfg.tie_embeddings else nn.DenseGeneral(
        cfg.vocab_size, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("embed", "vocab")),
        name="lm_head")
    if return_hidden and not self.is_initializing():
      if cache is not None:
        raise ValueError("return_hidden is for full forwards (training losses), not with a KV cache")
      return x_BTd
    logits_BTV = head(x_BTd).astype(jnp.float32)
    if cache is None:
      return logits_BTV
    return logits_BTV, KVCache(new_layers, cache.index + T)
