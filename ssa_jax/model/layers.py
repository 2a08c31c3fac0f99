"""Building blocks shared by the three families: norms, MLPs, rotary embeddings, partitioned dense layers."""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssa_jax.model.config import ModelConfig, RopeScaling

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
  """Rotates the first cfg.rotary_dim dims of every head (rotate-half layout, as transformers)."""
  rot = cfg.rotary_dim
  if rot == 0:
    return x_BTHD
  inv_freq = rope_inv_freq(rot, cfg.rope_theta, cfg.rope_scaling)
  angles_BTA = positions_BT.astype(jnp.float32)[..., None] * inv_freq
  angles_BT1P = jnp.concatenate([angles_BTA, angles_BTA], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles_BT1P).astype(x_BTHD.dtype), jnp.sin(angles_BT1P).astype(x_BTHD.dtype)
  x_rot, x_pass = x_BTHD[..., :rot], x_BTHD[..., rot:]
  x1, x2 = x_rot[..., : rot // 2], x_rot[..., rot // 2 :]
  rotated = x_rot * cos + jnp.concatenate([-x2, x1], axis=-1) * sin
  return jnp.concatenate([rotated, x_pass], axis=-1) if x_pass.shape[-1] else rotated
