"""SelectiveSelfAttention: projections, SSA temperatures on q / k / v, RoPE, and an unchanged kernel call."""

from __future__ import annotations

import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ssa_jax.errors import ConfigError
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.gates import GATED_KINDS, OutputGate
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
  """The attention kernel of the causal full forward: 'splash', 'cudnn' or 'xla' ('auto': see the config field).

  `backend` defaults to traced_platform(), so that a TPU program compiled ahead of time on a CPU host gets TPU's
  kernel.
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


def causal_attention(q_BTHD: Array, k_BTKD: Array, v_BTKD: Array, cfg: ModelConfig,
                     segment_ids_BT: Array | None = None) -> Array:
  """softmax(q k^T / sqrt(D)) v under the causal mask, with the kernel `kernel_implementation` picks.

  `segment_ids_BT` (int): packed documents; a token sees only the earlier tokens of its own segment. Splash
  takes the ids and skips nothing more (its static mask is causal only). XLA and cuDNN get a same-segment mask
  (B, 1, T, T); cuDNN's fused kernel receives it as an additive bias in the compute dtype, read from memory
  (2 T^2 bytes a row and layer at bf16: at T = 2048, 8 MiB a row), where the causal part stays implicit.
  """
  impl = kernel_implementation(cfg)
  if impl == "splash":
    # Off TPU (an explicit 'splash' on CPU) the Pallas kernel runs in interpret mode: for tests, slow.
    return splash_attention(q_BTHD, k_BTKD, v_BTKD, block_q=cfg.splash_block_q, block_kv=cfg.splash_block_kv,
                            segment_ids_BT=segment_ids_BT, interpret=traced_platform() != "tpu")
  same_document_B1TS = None
  if segment_ids_BT is not None:
    same_document_B1TS = (segment_ids_BT[:, None, :, None] == segment_ids_BT[:, None, None, :])
  return jax.nn.dot_product_attention(
      q_BTHD, k_BTKD, v_BTKD, mask=same_document_B1TS, scale=1.0 / math.sqrt(q_BTHD.shape[-1]), is_causal=True,
      implementation=impl)


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


def attention_weights(q_BTHD: Array, k_BSKD: Array, mask_BTS: Array) -> Array:
  """softmax(q k^T / sqrt(D)) rows (B, H, T, S) where `mask_BTS` (bool, query t sees key s; B may be 1) holds.

  GQA: query head h reads KV head h // G, G = H // K. The logits accumulate in float32 and the softmax runs in
  float32 (jax.nn.dot_product_attention's XLA path); the rows come back in float32.
  """
  B, T, H, D = q_BTHD.shape
  K = k_BSKD.shape[2]
  q_BTKGD = q_BTHD.reshape(B, T, K, H // K, D)
  logits_BKGTS = jnp.einsum("btkgd,bskd->bkgts", q_BTKGD, k_BSKD.astype(q_BTHD.dtype),
                            preferred_element_type=jnp.float32) * jnp.float32(1.0 / math.sqrt(D))
  masked = -0.7 * jnp.finfo(jnp.float32).max  # jax's value for a masked logit
  logits_BKGTS = jnp.where(mask_BTS[:, None, None], logits_BKGTS, masked)
  return jax.nn.softmax(logits_BKGTS, axis=-1).reshape(B, H, T, -1)


def weighted_values(probs_BHTS: Array, v_BSKD: Array) -> Array:
  """The attention output (B, T, H, D): each query head's rows over its KV head's values, in v's dtype."""
  B, H, T, S = probs_BHTS.shape
  K = v_BSKD.shape[2]
  probs_BKGTS = probs_BHTS.reshape(B, K, H // K, T, S).astype(v_BSKD.dtype)
  return jnp.einsum("bkgts,bskd->btkgd", probs_BKGTS, v_BSKD).reshape(B, T, H, -1)


class SelectiveSelfAttention(nn.Module):
  """Causal multi-head (GQA) attention whose q / k / v are multiplied by per-token, per-head temperatures; the
  kernel runs unchanged (temper_and_rotate)."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTd: Array, positions_BT: Array, feature_BT: Array | None = None,
               cache: LayerCache | None = None, cache_index: Array | None = None, mask_BTT: Array | None = None,
               segment_ids_BT: Array | None = None) -> tuple[Array, LayerCache | None]:
    """`mask_BTT` (bool, True = query t may see key s) replaces the causal mask: packed or tree-shaped rows.
    `segment_ids_BT` keeps the causal kernel but confines each token to its segment (packed training windows).

    The one attention computation: temper_and_rotate, then the causal kernel or, under an explicit mask,
    attention_weights (which ssa_jax.analysis.norms reads as well) and weighted_values."""
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

    if cache is not None:
      if mask_BTT is not None or segment_ids_BT is not None:
        raise ValueError("mask_BTT and segment_ids_BT are for full forwards; with a KV cache the mask follows the "
                         "cache index")
      cache = LayerCache(*(jax.lax.dynamic_update_slice_in_dim(old, new.astype(old.dtype), cache_index, 1)
                           for old, new in ((cache.k_BSKD, k_BSKD), (cache.v_BSKD, v_BSKD))))
      k_BSKD, v_BSKD = cache.k_BSKD.astype(q_BTHD.dtype), cache.v_BSKD.astype(q_BTHD.dtype)
      # Query t sits at absolute position cache_index + t and sees every cached key up to and including it.
      key_pos_S = jnp.arange(k_BSKD.shape[1])
      mask_BTT = (key_pos_S[None, :] <= (cache_index + jnp.arange(q_BTHD.shape[1]))[:, None])[None]
    if mask_BTT is None:
      out_BTHD = causal_attention(q_BTHD, k_BSKD, v_BSKD, cfg, segment_ids_BT)
    else:
      if segment_ids_BT is not None:
        raise ValueError("give either mask_BTT or segment_ids_BT: the explicit mask already says what each sees")
      # An explicit mask (packed or tree-shaped rows, a KV cache): XLA, through the rows the analyses read.
      out_BTHD = weighted_values(attention_weights(q_BTHD, k_BSKD, mask_BTT), v_BSKD)
    if cfg.attention_kind in GATED_KINDS:  # docs/methods.md; the gate reads this token's x alone
      out_BTHD = OutputGate(cfg, name="output_gate")(x_BTd, out_BTHD)
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    o = dense(cfg.d_model, ("heads", "head_dim", "embed"), cfg, name="o", use_bias=cfg.out_bias, in_axis=(-2, -1),
              std=out_std)
    return o(out_BTHD), cache
