"""Building blocks shared by the three families: norms, MLPs, rotary embeddings, partitioned dense layers."""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssa_jax.model.config import ModelConfig, RopeScaling
from ssa_jax.model.platform import traced_platform

Array = jax.Array


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
  """The compute dtype of `cfg` (params are always float32)."""
  return jnp.dtype(cfg.dtype)


def dense(features: int | Sequence[int], axes: tuple[str, ...], cfg: ModelConfig, *, name: str, use_bias: bool,
          in_axis: int | tuple[int, ...] = -1, std: float | None = None) -> nn.DenseGeneral:
  """A DenseGeneral whose kernel (and bias) carry logical axis names; kernel layout is (inputs..., outputs...)."""
  n_in = 1 if isinstance(in_axis, int) else len(in_axis)
  return nn.DenseGeneral(
      features=features, axis=in_axis, use_bias=use_bias, dtype=compute_dtype(cfg), param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(nn.initializers.normal(std or cfg.init_std), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[n_in:]), name=name)


class Norm(nn.Module):
  """LayerNorm (GPT-2, NeoX) or RMSNorm (Llama), computed in float32."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    x32 = x.astype(jnp.float32)
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (d,), jnp.float32)
    if self.cfg.norm == "rmsnorm":
      y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.norm_eps)
      # As transformers' LlamaRMSNorm: normalise in fp32, cast back, then scale.
      return scale.astype(x.dtype) * y.astype(x.dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (d,), jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.cfg.norm_eps) * scale + bias
    return y.astype(x.dtype)


ACTIVATION_FNS = {  # by config.model.activation
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
}


class Mlp(nn.Module):
  """GELU MLP (GPT-2, NeoX) or SwiGLU (Llama)."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTd: Array) -> Array:
    cfg = self.cfg
    act = ACTIVATION_FNS[cfg.activation]
    up = dense(cfg.mlp_dim, ("embed", "mlp"), cfg, name="up", use_bias=cfg.mlp_bias)(x_BTd)
    if cfg.gated_mlp:
      up = act(dense(cfg.mlp_dim, ("embed", "mlp"), cfg, name="gate", use_bias=cfg.mlp_bias)(x_BTd)) * up
    else:
      up = act(up)
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    return dense(cfg.d_model, ("mlp", "embed"), cfg, name="down", use_bias=cfg.mlp_bias, std=out_std)(up)


def rope_inv_freq(rotary_dim: int, theta: float, scaling: RopeScaling | None) -> Array:
  """Inverse frequencies (rotary_dim // 2,), with Llama-3 scaling as transformers computes it."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
  if scaling is None:
    return inv_freq
  old_len = scaling.original_max_position_embeddings
  low_wavelen = old_len / scaling.low_freq_factor
  high_wavelen = old_len / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
  smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(x_BTHD: Array, positions_BT: Array, cfg: ModelConfig) -> Array:
  """Rotates the first cfg.rotary_dim dims of every head (rotate-half layout, as transformers): on TPU as
  rope_by_matmul, elsewhere as rope_by_slices (the same numbers, tests/test_rope.py)."""
  if cfg.rotary_dim == 0:
    return x_BTHD
  rope = rope_by_matmul if traced_platform() == "tpu" else rope_by_slices
  return rope(x_BTHD, positions_BT, cfg)


def rope_angles(positions_BT: Array, cfg: ModelConfig) -> Array:
  """The rotation angles (B, T, rotary_dim): float32 position x inverse frequency, each pair's twice."""
  angles_BTA = positions_BT.astype(jnp.float32)[..., None] * rope_inv_freq(cfg.rotary_dim, cfg.rope_theta,
                                                                            cfg.rope_scaling)
  return jnp.concatenate([angles_BTA, angles_BTA], axis=-1)


def rope_by_slices(x_BTHD: Array, positions_BT: Array, cfg: ModelConfig) -> Array:
  """RoPE as transformers writes it: the rotated dims sliced off, rotate-half by concatenation, joined back."""
  rot = cfg.rotary_dim
  angles_BT1R = rope_angles(positions_BT, cfg)[:, :, None, :]
  cos, sin = jnp.cos(angles_BT1R).astype(x_BTHD.dtype), jnp.sin(angles_BT1R).astype(x_BTHD.dtype)
  x_rot, x_pass = x_BTHD[..., :rot], x_BTHD[..., rot:]
  x1, x2 = x_rot[..., : rot // 2], x_rot[..., rot // 2 :]
  rotated = x_rot * cos + jnp.concatenate([-x2, x1], axis=-1) * sin
  return jnp.concatenate([rotated, x_pass], axis=-1) if x_pass.shape[-1] else rotated


def rope_by_matmul(x_BTHD: Array, positions_BT: Array, cfg: ModelConfig) -> Array:
  """RoPE over the whole head: x cos + (x P) sin, cos = 1 and sin = 0 past rotary_dim, P the (D, D) signed
  permutation taking x to rotate-half(x). On TPU a 16- or 48-wide slice of a 64-wide head is laid out with its
  minor dimension padded to 128 lanes, and Pythia's partial rotary by slices cost more than the q / k
  projections (docs/benchmarks.md, "RoPE on TPU"); a GPU fuses the slices and would pay for the extra matmul. P
  holds one +-1 per column, so the product is exact (HIGHEST: no TF32 rounding of float32)."""
  rot, D = cfg.rotary_dim, x_BTHD.shape[-1]
  rotated_D = jnp.arange(D) < rot
  angles_BT1D = jnp.pad(rope_angles(positions_BT, cfg), ((0, 0), (0, 0), (0, D - rot)))[:, :, None]
  cos = jnp.where(rotated_D, jnp.cos(angles_BT1D), 1.0).astype(x_BTHD.dtype)
  sin = jnp.where(rotated_D, jnp.sin(angles_BT1D), 0.0).astype(x_BTHD.dtype)
  half, i = rot // 2, jnp.arange(rot // 2)
  partner_DD = jnp.zeros((D, D), x_BTHD.dtype).at[i + half, i].set(-1).at[i, i + half].set(1)
  partner_BTHD = jnp.einsum("bthd,de->bthe", x_BTHD, partner_DD, precision=jax.lax.Precision.HIGHEST)
  return x_BTHD * cos + partner_BTHD * sin
