"""SelectiveSelfAttention: projections, SSA temperatures on q / k / v, RoPE, then the attention method
(config.model.attention_kind: plain softmax's unchanged kernel call by default) and the output projection."""

from __future__ import annotations

import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ssa_jax.model.config import ModelConfig
from ssa_jax.model.kernels import Visibility
from ssa_jax.model.layers import apply_rope, compute_dtype, dense
from ssa_jax.model.methods import method_class
from ssa_jax.model.temperature import Temperature

Array = jax.Array


@flax.struct.dataclass
class LayerCache:
  """One layer's keys and values, (B, S, K, D): k after RoPE and tau_k, v after tau_v; and what the attention
  method caches besides (its cache_spec: e.g. forgetting attention's cumulative forget sums)."""

  k_BSKD: Array
  v_BSKD: Array
  method: dict[str, Array] = flax.struct.field(default_factory=dict)


def temper_and_rotate(proj: dict[str, Array], tau: dict[str, Array], positions_BT: Array, cfg: ModelConfig
                      ) -> tuple[Array, Array, Array]:
  """(q, k, v) as the kernel receives them: each projection ('q' / 'k' / 'v') times its temperature tau_BTH
  (those in `tau`; the others are unscaled), then RoPE on q and k. tau is a scalar per token and head, so this
  equals scaling the logits row-wise (tau_q) / column-wise (tau_k) and the values (tau_v); it commutes with RoPE.

  The product comes after RoPE (bench/fusion_table.py, docs/benchmarks.md "SSA's cost"): it then ends the
  elementwise chain that XLA fuses into the copy laying q / k / v out for the kernel, where before RoPE its
  scaled tensor was written and read back by RoPE's slices."""
  rotated = {"q": apply_rope(proj["q"], positions_BT, cfg), "k": apply_rope(proj["k"], positions_BT, cfg),
             "v": proj["v"]}
  scaled = {c: p if c not in tau else (p * tau[c][..., None]).astype(p.dtype) for c, p in rotated.items()}
  return scaled["q"], scaled["k"], scaled["v"]


class SelectiveSelfAttention(nn.Module):
  """Causal multi-head (GQA) attention whose q / k / v are multiplied by per-token, per-head temperatures
  (temper_and_rotate), then attended by config.model.attention_kind's method (ssa_jax.model.methods)."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTd: Array, positions_BT: Array, feature_BT: Array | None = None,
               cache: LayerCache | None = None, cache_index: Array | None = None, mask_BTT: Array | None = None,
               segment_ids_BT: Array | None = None, layer_index: Array | int = 0) -> tuple[Array, LayerCache | None]:
    """`mask_BTT` (bool, True = query t may see key s) replaces the causal mask: packed or tree-shaped rows.
    `segment_ids_BT` keeps the causal kernel but confines each token to its segment (packed training windows).
    `layer_index` (0-based; traced under nn.scan) is for methods whose constants depend on depth."""
    cfg = self.cfg
    H, K, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q_BTHD = dense((H, D), ("embed", "heads", "head_dim"), cfg, name="q", use_bias=cfg.qkv_bias)(x_BTd)
    k_BTKD = dense((K, D), ("embed", "kv_heads", "head_dim"), cfg, name="k", use_bias=cfg.qkv_bias)(x_BTd)
    v_BTKD = dense((K, D), ("embed", "kv_heads", "head_dim"), cfg, name="v", use_bias=cfg.qkv_bias)(x_BTd)

    projections = {"q": q_BTHD, "k": k_BTKD, "v": v_BTKD}
    taus = {}
    for comp in cfg.ssa.components:
      taus[comp] = Temperature(
          cfg.ssa, num_heads=H if comp == "q" else K, d_model=cfg.d_model, max_seq_len=cfg.max_seq_len,
          component=comp, head_axis="heads" if comp == "q" else "kv_heads", dtype=compute_dtype(cfg),
          name=f"ssa_{comp}")(x_BTd, positions_BT, projections[comp], feature_BT)
      self.sow("intermediates", f"tau_{comp}", taus[comp])
    q_BTHD, k_BSKD, v_BSKD = temper_and_rotate(projections, taus, positions_BT, cfg)  # S = T without a cache

    if mask_BTT is not None and segment_ids_BT is not None:
      raise ValueError("give either mask_BTT or segment_ids_BT: the explicit mask already says what each sees")
    seen = Visibility(mask_BTT, segment_ids_BT)
    state = None
    if cache is not None:
      if mask_BTT is not None or segment_ids_BT is not None:
        raise ValueError("mask_BTT and segment_ids_BT are for full forwards; with a KV cache the mask follows the "
                         "cache index")
      cache = cache.replace(**{name: jax.lax.dynamic_update_slice_in_dim(old, new.astype(old.dtype), cache_index, 1)
                               for name, old, new in (("k_BSKD", cache.k_BSKD, k_BSKD),
                                                      ("v_BSKD", cache.v_BSKD, v_BSKD))})
      k_BSKD, v_BSKD = cache.k_BSKD.astype(q_BTHD.dtype), cache.v_BSKD.astype(q_BTHD.dtype)
      # Query t sits at absolute position cache_index + t and sees every cached key up to and including it.
      key_pos_S = jnp.arange(k_BSKD.shape[1])
      seen = Visibility((key_pos_S[None, :] <= (cache_index + jnp.arange(q_BTHD.shape[1]))[:, None])[None],
                        cache_index=cache_index)
      state = cache.method
    method = method_class(cfg)
    out_BTHD, state = method(cfg, name=method.layer_name)(x_BTd, q_BTHD, k_BSKD, v_BSKD, seen, layer_index, state)
    if cache is not None:
      cache = cache.replace(method=state)
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    o = dense(cfg.d_model, ("heads", "head_dim", "embed"), cfg, name="o", use_bias=cfg.out_bias, in_axis=(-2, -1),
              std=out_std)
    return o(out_BTHD), cache
