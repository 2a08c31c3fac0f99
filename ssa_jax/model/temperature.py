"""SSA's inverse temperatures tau(x, n) = tau_tok(x) + tau_pos(n): one float32 scalar per token per head.

Matmuls run in the compute dtype with float32 accumulation; the temperature values (tanh, log n, the sum) are
float32. Each positive learned scalar is a function whose logarithm Adam moves additively (sigmoid, exp,
softplus), and each parameter declares its learning-rate group in an SSAParam box: docs/ssa.md says why.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ssa_jax.model.config import SSAConfig

Array = jax.Array

class SSAParam(nn.LogicallyPartitioned):
  """A variable SSA adds, boxed with its logical axes and its learning-rate group: 'scalar' (one learned scalar
  per head) or 'matrix'. ssa_jax.model.params.ssa_groups reads the groups from an abstract init."""

  group: str = flax.struct.field(pytree_node=False, default="matrix")


def ssa_param(init: nn.initializers.Initializer, axes: tuple[str, ...], group: str):
  """`init` returning its value in an SSAParam box (as nn.with_logical_partitioning does with its own)."""
  return lambda *args, **kwargs: SSAParam(init(*args, **kwargs), axes, group=group)


class TemperatureDense(nn.Module):
  """y = x W + b with float32 parameters, compute-dtype operands and a float32 result."""

  features: int
  axes: tuple[str, str]
  kernel_init: nn.initializers.Initializer
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", ssa_param(self.kernel_init, self.axes, "matrix"), (x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param("bias", ssa_param(nn.initializers.zeros, self.axes[1:], "matrix"), (self.features,),
                      jnp.float32)
    return jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (((x.ndim - 1,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32) + bias


class Temperature(nn.Module):
  """tau_BTH (float32) of one scaled projection (`component` 'q', 'k' or 'v') for `num_heads` heads; its
  parameters per kind are docs/ssa.md's."""

  ssa: SSAConfig
  num_heads: int
  d_model: int
  max_seq_len: int
  component: str = "q"
  head_axis: str = "heads"  # logical axis of the heads this temperature serves ('heads' or 'kv_heads')
  dtype: jnp.dtype = jnp.float32  # the compute dtype of the temperature's matmuls

  @nn.compact
  def __call__(self, x_BTd: Array, positions_BT: Array, proj_BTHD: Array | None = None,
               feature_BT: Array | None = None) -> Array:
    tau_BTH = self._position_term(positions_BT)
    if self.ssa.token:
      tau_BTH = tau_BTH + jnp.tanh(self._token_logits(x_BTd, proj_BTHD, feature_BT))
    return tau_BTH

  def _position_term(self, positions_BT: Array) -> Array:
    """tau_pos (B, T, H) float32; the constant 1 when the position term is off or does not act on this component."""
    H, ssa = self.num_heads, self.ssa
    shape = (*positions_BT.shape, H)
    if not ssa.position_acts_on(self.component):
      return jnp.ones(shape, jnp.float32)
    # n is the 1-based absolute position of the token (with a KV cache: in the whole sequence).
    n_BT1 = positions_BT.astype(jnp.float32)[..., None] + 1.0
    log_n_BT1 = jnp.log(n_BT1)
    per_head = lambda name, init: self.param(
        name, ssa_param(nn.initializers.constant(init), (self.head_axis,), "scalar"), (H,), jnp.float32)
    kind = ssa.position_kind
    if kind == "log":
      return 1.0 + jax.nn.sigmoid(per_head("alpha", ssa.alpha_init(self.max_seq_len))) * log_n_BT1
    if kind == "yarn":
      # YaRN's q and k factors sqrt(1/t) = 0.1 ln s + 1 together, as one logit factor on the query's row.
      return jnp.broadcast_to(jnp.square(1.0 + ssa.yarn_scale * log_n_BT1), shape)
    if kind == "llama4":
      # transformers' Llama4: log(floor((cache_position + 1) / floor_scale) + 1) * attn_scale + 1.
      steps_BT1 = jnp.floor(n_BT1 / ssa.llama4_floor_scale)
      return jnp.broadcast_to(1.0 + ssa.llama4_attn_scale * jnp.log(steps_BT1 + 1.0), shape)
    if kind == "logn":
      # Qwen's log-n scaling (modeling_qwen.py's logn_list): log_L(n) past the training length L, else 1.
      log_train_len = math.log(ssa.reference_len(self.max_seq_len))
      return jnp.broadcast_to(jnp.maximum(1.0, log_n_BT1 / log_train_len), shape)
    if kind == "constant":
      return jnp.broadcast_to(jnp.exp(per_head("log_tau", 0.0)), shape)
    if kind == "ssmax":
      return jax.nn.softplus(per_head("ssmax_s", ssa.ssmax_init(self.max_seq_len))) * log_n_BT1
    raise ValueError(f"unknown position_kind {kind!r}")

  def _token_logits(self, x_BTd, proj_BTHD, feature_BT) -> Array:
    """f(x) of docs/ssa.md, (B, T, H) float32; every kind starts at f = 0 (tau_tok = 0)."""
    H, ssa = self.num_heads, self.ssa
    if ssa.token_kind == "mlp":
      hidden = int(round(self.d_model * ssa.hidden_ratio))
      h_BTF = TemperatureDense(hidden, ("embed", "ssa_hidden"), nn.initializers.normal(0.02), self.dtype,
                               name="w1")(x_BTd)
      h_BTF = jax.nn.gelu(h_BTF, approximate=False)
      return TemperatureDense(H, ("ssa_hidden", self.head_axis), nn.initializers.zeros, self.dtype, name="w2")(h_BTF)
    if ssa.token_kind == "shared":
      if proj_BTHD is None:
        raise ValueError("the 'shared' token term needs the layer's own projection")
      Hin, D = proj_BTHD.shape[-2:]
      if ssa.weight_sharing_scope == "head":
        w = self.param("w", ssa_param(nn.initializers.zeros, (self.head_axis, "head_dim"), "matrix"), (H, D),
                       jnp.float32)
      else:  # 'layer' (the paper's): head g reads the whole projection (every head h of it), one H*D vector per head.
        w = self.param("w", ssa_param(nn.initializers.zeros, ("ssa_heads", self.head_axis, "head_dim"), "matrix"),
                       (H, Hin, D), jnp.float32)
      return shared_token_logits(proj_BTHD, w, ssa.weight_sharing_scope, jnp.dtype(self.dtype).name)
    if ssa.token_kind == "frequency":
      if feature_BT is None:
        raise ValueError("the 'frequency' token term needs the token feature phi(token)")
      beta_H = self.param("beta", ssa_param(nn.initializers.zeros, (self.head_axis,), "scalar"), (H,), jnp.float32)
      return feature_BT.astype(jnp.float32)[..., None] * beta_H
    raise ValueError(f"unknown token_kind {ssa.token_kind!r}")


_SHARED_EINSUM = {"head": "bthd,hd->bth", "layer": "bthd,ghd->btg"}  # by weight_sharing_scope
_SHARED_DW = {"head": "bthd,bth->hd", "layer": "bthd,btg->ghd"}
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def shared_token_logits(proj_BTHD: Array, w: Array, scope: str, dtype: str) -> Array:
  """Weight sharing's f(x) (B, T, H) float32: w . GeLU(proj), per head ('head': w_HD) or over the whole
  projection ('layer': w_HHD). No new matmul over d x d: the activation of the projection the layer computes
  anyway, in its own dtype (no float32 copy of q or v), with float32 accumulation.

  Its backward is written out so that nothing (B, T, H, D)-sized is saved or materialised beyond the
  projection itself: GeLU(proj) is recomputed inside the matmul for dw and GeLU'(proj) inside the product
  for dproj (autodiff saved GeLU(proj) and read it back twice)."""
  g_BTHD = jax.nn.gelu(proj_BTHD.astype(dtype), approximate=False)
  return jnp.einsum(_SHARED_EINSUM[scope], g_BTHD, w.astype(dtype), preferred_element_type=jnp.float32)


def _shared_fwd(proj_BTHD, w, scope, dtype):
  return shared_token_logits(proj_BTHD, w, scope, dtype), (proj_BTHD, w)


def _shared_bwd(scope, dtype, residuals, df_BTH):
  proj_BTHD, w = residuals
  x_BTHD = proj_BTHD.astype(dtype)
  g_BTHD = jax.nn.gelu(x_BTHD, approximate=False)
  dw = jnp.einsum(_SHARED_DW[scope], g_BTHD, df_BTH.astype(dtype), preferred_element_type=jnp.float32)
  w32 = w.astype(dtype).astype(jnp.float32)
  if scope == "head":
    dg_BTHD = df_BTH[..., None] * w32
  else:
    # A sum of H broadcast products, not a matmul: elementwise, it fuses with GeLU' and the add of the
    # temperature product's own cotangent into one pass that writes dproj once (a (.., H) x (H, H*D) matmul
    # would write its (B, T, H, D) result and read it back).
    dg_BTHD = sum(df_BTH[..., g, None, None] * w32[g] for g in range(w32.shape[0]))
  # d/dx of x Phi(x) = Phi(x) + x phi(x), the exact GeLU's derivative.
  x32 = x_BTHD.astype(jnp.float32)
  gelu_prime = 0.5 * jax.lax.erfc(-x32 * _INV_SQRT2) + x32 * jnp.exp(-0.5 * x32 * x32) * _INV_SQRT_2PI
  return (dg_BTHD * gelu_prime).astype(proj_BTHD.dtype), dw.astype(w.dtype)


shared_token_logits.defvjp(_shared_fwd, _shared_bwd)
