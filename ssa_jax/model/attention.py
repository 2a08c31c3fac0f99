"""SelectiveSelfAttention: projections, SSA temperatures on q / k / v, RoPE, and an unchanged kernel call."""

from __future__ import annotations

import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ssa_jax.errors import ConfigError
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.layers import apply_rope, compute_dtype, dense
from ssa_jax.model.splash import splash_attention
from ssa_jax.model.temperature import Temperature

Array = jax.Array


@flax.struct.dataclass
class LayerCache:
  """One layer's keys and values, (B, S, Hk, D): k after RoPE and tau_k, v after tau_v."""

  k_BSKD: Array
  v_BSKD: Array


def kernel_implementation(cfg: ModelConfig, backend: str | None = None) -> str:
  """The attention kernel of the causal full forward: 'splash', 'cudnn' or 'xla'.

  'auto': splash (Pallas) on TPU, cuDNN (flash) on GPU when the compute dtype is bfloat16 / float16 (cuDNN
  takes nothing else), XLA otherwise (CPU, float32 on GPU). `backend` defaults to the platform of the mesh
  the computation is traced under (`jax.set_mesh`; so a TPU program compiled ahead of time on a CPU host
  gets TPU's kernel), else jax's default backend.
  """
  backend = backend or traced_platform()
  if cfg.attention_impl == "splash" and backend in ("gpu", "cuda", "rocm"):
    raise ConfigError(f"model.attention_impl: 'splash' is a TPU kernel; on {backend} use 'cudnn', 'xla' or 'auto'")
  if cfg.attention_impl != "auto":
    return cfg.attention_impl
  if backend == "tpu":
    return "splash"
  return "cudnn" if backend in ("gpu", "cuda") and cfg.dtype in ("bfloat16", "float16") else "xla"


def traced_platform() -> str:
  """The platform being compiled for: that of the mesh in context (`jax.set_mesh`), else jax's default."""
  mesh = jax.sharding.get_abstract_mesh()
  return jax.default_backend() if mesh.empty else mesh.abstract_device.platform


def causal_attention(q_BTHD: Array, k_BTKD: Array, v_BTKD: Array, cfg: ModelConfig) -> Array:
  """softmax(q k^T / sqrt(D)) v under the causal mask, with the kernel `kernel_implementation` picks."""
  impl = kernel_implementation(cfg)
  if impl == "splash":
    # Off TPU (an explicit 'splash' on CPU) the Pallas kernel runs in interpret mode: for tests, slow.
    return splash_attention(q_BTHD, k_BTKD, v_BTKD, block_q=cfg.splash_block_q, block_kv=cfg.splash_block_kv,
                            interpret=traced_platform() != "tpu")
  return jax.nn.dot_product_attention(
      q_BTHD, k_BTKD, v_BTKD, scale=1.0 / math.sqrt(q_BTHD.shape[-1]), is_causal=True, implementation=impl)


class SelectiveSelfAttention(nn.Module):
  """Causal multi-head (GQA) attention whose q / k / v are multiplied by per-token, per-head temperatures.

  tau is a scalar per token and head, so scaling the projections equals scaling the attention logits row-wise
  (tau_q) and the values (tau_v); and it commutes with RoPE. The kernel therefore runs unchanged.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(
      self,
      x_BTd: Array,
      positions_BT: Array,
      feature_BT: Array | None = None,
      cache: LayerCache | None = None,
      cache_index: Array | None = None,
      mask_BTT: Array | None = None,
  ) -> tuple[Array, LayerCache | None]:
    """`mask_BTT` (bool, True = query t may see key s) replaces the causal mask: packed or tree-shaped rows."""
    cfg = self.cfg
    H, K, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q_BTHD = dense((H, D), ("embed", "heads", "head_dim"), cfg, name="q", use_bias=cfg.qkv_bias)(x_BTd)
    k_BTKD = dense((K, D), ("embed", "kv_heads", "head_dim"), cfg, name="k", use_bias=cfg.qkv_bias)(x_BTd)
    v_BTKD = dense((K, D), ("embed", "kv_heads", "head_dim"), cfg, name="v", use_bias=cfg.qkv_bias)(x_BTd)

    projections = {"q": q_BTHD, "k": k_BTKD, "v": v_BTKD}
    for comp in cfg.ssa.components:
      heads = H if comp == "q" else K
      tau_BTH = Temperature(
          cfg.ssa,
          num_heads=heads,
          d_model=cfg.d_model,
          max_seq_len=cfg.max_seq_len,
          component=comp,
          head_axis="heads" if comp == "q" else "kv_heads",
          dtype=compute_dtype(cfg),
          name=f"ssa_{comp}",
      )(x_BTd, positions_BT, projections[comp], feature_BT)
      self.sow("intermediates", f"tau_{comp}", tau_BTH)
      projections[comp] = (projections[comp] * tau_BTH[..., None]).astype(projections[comp].dtype)
    q_BTHD, k_BTKD, v_BTKD = projections["q"], projections["k"], projections["v"]

    q_BTHD = apply_rope(q_BTHD, positions_BT, cfg)
    k_BTKD = apply_rope(k_BTKD, positions_BT, cfg)

    scale = 1.0 / math.sqrt(D)
    if cache is None and mask_BTT is None:
      out_BTHD = causal_attention(q_BTHD, k_BTKD, v_BTKD, cfg)
    elif cache is None:
      # Packed or tree-shaped rows (the eval scorer's trees are no segment mask): XLA with the explicit mask.
      out_BTHD = jax.nn.dot_product_attention(
          q_BTHD, k_BTKD, v_BTKD, scale=scale, mask=mask_BTT[:, None], implementation="xla"
      )
    else:
      if mask_BTT is not None:
        raise ValueError("mask_BTT is for full forwards; with a KV cache the mask follows the cache index")
      k_BSKD = jax.lax.dynamic_update_slice_in_dim(cache.k_BSKD, k_BTKD.astype(cache.k_BSKD.dtype), cache_index, 1)
      v_BSKD = jax.lax.dynamic_update_slice_in_dim(cache.v_BSKD, v_BTKD.astype(cache.v_BSKD.dtype), cache_index, 1)
      cache = LayerCache(k_BSKD, v_BSKD)
      # Query t sits at absolute position cache_index + t and sees every cached key up to and including it.
      key_pos_S = jnp.arange(k_BSKD.shape[1])
      mask_11TS = (key_pos_S[None, :] <= (cache_index + jnp.arange(q_BTHD.shape[1]))[:, None])[None, None]
      out_BTHD = jax.nn.dot_product_attention(
          q_BTHD, k_BSKD.astype(q_BTHD.dtype), v_BSKD.astype(q_BTHD.dtype), scale=scale, mask=mask_11TS,
          implementation="xla",
      )
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    out_BTd = dense(
        cfg.d_model, ("heads", "head_dim", "embed"), cfg, name="o", use_bias=cfg.out_bias, in_axis=(-2, -1),
        std=out_std,
    )(out_BTHD)
    return out_BTd, cache
