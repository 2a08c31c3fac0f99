"""SSA's inverse temperatures tau(x, n) = tau_tok(x) + tau_pos(n): one float32 scalar per token per head."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssa_jax.config import SSAConfig

Array = jax.Array


def _partitioned(init, axes):
  return nn.with_logical_partitioning(init, axes)


class Temperature(nn.Module):
  """The temperature of one scaled projection (q, k or v) for `num_heads` heads.

  Returns tau_BTH in float32. Parameters: base `w1`, `w2` (MLP); weight sharing `w` (one vector per head);
  feature `beta`; position `alpha` (one scalar per head); constant baseline `tau`.
  """

  ssa: SSAConfig
  num_heads: int
  d_model: int
  max_seq_len: int
  head_axis: str = "heads"  # logical axis of the heads this temperature serves ('heads' or 'kv_heads')

  @nn.compact
  def __call__(
      self,
      x_BTd: Array,
      positions_BT: Array,
      proj_BTHD: Array | None = None,
      feature_BT: Array | None = None,
  ) -> Array:
    H, ssa = self.num_heads, self.ssa
    # n is the 1-based absolute position of the token (with a KV cache: in the whole sequence).
    log_n_BT1 = jnp.log(positions_BT.astype(jnp.float32) + 1.0)[..., None]
    if ssa.variant == "yarn":
      return jnp.broadcast_to(1.0 + ssa.yarn_scale * log_n_BT1, (*positions_BT.shape, H))
    if ssa.variant == "constant":
      tau_H = self.param("tau", _partitioned(nn.initializers.ones, (self.head_axis,)), (H,), jnp.float32)
      return jnp.broadcast_to(tau_H, (*positions_BT.shape, H))

    tau_BTH = jnp.ones((*positions_BT.shape, H), jnp.float32)
    if ssa.token:
      tau_BTH = tau_BTH + jnp.tanh(self._token_logits(x_BTd, proj_BTHD, feature_BT))
    if ssa.position:
      alpha_H = self.param(
          "alpha",
          _partitioned(nn.initializers.constant(ssa.alpha_init(self.max_seq_len)), (self.head_axis,)),
          (H,),
          jnp.float32,
      )
      tau_BTH = tau_BTH + jax.nn.sigmoid(alpha_H) * log_n_BT1
    return tau_BTH

  def _token_logits(self, x_BTd, proj_BTHD, feature_BT) -> Array:
    """f(x) of SSA.md, (B, T, H) float32; every variant starts at f = 0 (tau_tok = 0)."""
    H, ssa = self.num_heads, self.ssa
    if ssa.variant == "base":
      hidden = int(round(self.d_model * ssa.hidden_ratio))
      h_BTF = nn.Dense(
          hidden,
          dtype=jnp.float32,
          kernel_init=_partitioned(nn.initializers.normal(0.02), ("embed", "ssa_hidden")),
          bias_init=_partitioned(nn.initializers.zeros, ("ssa_hidden",)),
          name="w1",
      )(x_BTd.astype(jnp.float32))
      return nn.Dense(
          H,
          dtype=jnp.float32,
          kernel_init=_partitioned(nn.initializers.zeros, ("ssa_hidden", self.head_axis)),
          bias_init=_partitioned(nn.initializers.zeros, (self.head_axis,)),
          name="w2",
      )(jax.nn.gelu(h_BTF, approximate=False))
    if ssa.variant == "weight_sharing":
      if proj_BTHD is None:
        raise ValueError("weight_sharing temperature needs the layer's own projection")
      w_HD = self.param(
          "w", _partitioned(nn.initializers.zeros, (self.head_axis, "head_dim")), proj_BTHD.shape[-2:], jnp.float32
      )
      # No new matmul: a per-head dot product with the activation of the projection the layer computes anyway.
      return jnp.einsum("bthd,hd->bth", jax.nn.gelu(proj_BTHD.astype(jnp.float32), approximate=False), w_HD)
    if ssa.variant == "feature":
      if feature_BT is None:
        raise ValueError("feature temperature needs the token feature phi(token)")
      beta_H = self.param("beta", _partitioned(nn.initializers.zeros, (self.head_axis,)), (H,), jnp.float32)
      return feature_BT.astype(jnp.float32)[..., None] * beta_H
    raise ValueError(f"unknown SSA variant {ssa.variant!r}")
