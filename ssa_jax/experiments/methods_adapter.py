"""The attention-method variants of the synthetic studies: variant names as the comparison reads them, and one
adapter that runs a method's own module (ssa_jax.model.methods) on a study's q / k / v.

A study's variant is the comparison's name (configs/models.py SSA_VARIANTS and ATTENTION_VARIANTS joined with '+',
parsed by ssa_jax.experiments.compare.cli.variant_parts): 'vanilla' and 'ssa' are the study's own hand-written
models; a method ('gated', 'diff', ...) replaces the study's softmax by the method's module, with the study's SSA
(its query temperature or value selection) applied to q / v first for 'ssa+<method>'. There is no second copy of
any method's math here: MethodAttention builds `method_class(cfg)(cfg)` and calls it with flax init / apply.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from ssa_jax.errors import ConfigError
from ssa_jax.experiments.compare.cli import variant_parts
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.kernels import Visibility
from ssa_jax.model.methods import method_class

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class StudyVariant:
  """One variant of a study: its name, whether the study's own SSA is on, and its attention_kind."""

  name: str
  ssa: bool
  kind: str  # 'softmax': the study's own hand-written attention

  @property
  def uses_method(self) -> bool:
    """Whether the attention is a method's module (not the study's own softmax)."""
    return self.kind != "softmax"


def parse_variant(study: str, name: str, ssa_meaning: str) -> StudyVariant:
  """The StudyVariant of a comparison name; ConfigError (one line) for an unknown name or one without a meaning in
  `study` (its SSA is `ssa_meaning`)."""
  try:
    preset, kind = variant_parts(name)
  except ConfigError as e:
    raise ConfigError(f"{study}: {e}") from None
  if preset not in ("vanilla", "ssa"):
    raise ConfigError(f"--variants: {study} has no counterpart of {name!r} (SSA preset {preset!r}): its SSA is "
                      f"{ssa_meaning}, which 'ssa' names")
  return StudyVariant(name, preset == "ssa", kind)


def parse_variants(study: str, text: str, ssa_meaning: str) -> list[StudyVariant]:
  """A comma-separated list of variant names (duplicates dropped), each checked by parse_variant."""
  names = list(dict.fromkeys(s.strip() for s in str(text).split(",") if s.strip()))
  return [parse_variant(study, n, ssa_meaning) for n in names]


def method_heads(kind: str) -> int:
  """Heads a study's one-head toy needs for method `kind`: differential pairs two sub-heads into one head."""
  return 2 if kind == "differential" else 1


def method_config(kind: str, x_dim: int, num_heads: int, head_dim: int, seq_len: int) -> ModelConfig:
  """A one-layer ModelConfig around a study's shapes: d_model is x's width (what a method's own projections of x
  read), head_dim free of it (the 'llama' family allows that), float32, the XLA kernel."""
  cfg = ModelConfig(family="llama", vocab_size=1, d_model=x_dim, num_layers=1, num_heads=num_heads, mlp_dim=1,
                    max_seq_len=seq_len, head_dim=head_dim, rotary_pct=0.0, attention_impl="xla",
                    attention_kind=kind)
  return cfg.validate(where=f"attention method {kind!r}")


def kernel_query(q_BTHD: Array, logit_scale: float = 1.0) -> Array:
  """q such that the method kernel's softmax(q k^T / sqrt(D)) has the study's logits logit_scale * q k^T."""
  return q_BTHD * (logit_scale * math.sqrt(q_BTHD.shape[-1]))


class MethodAttention:
  """attention_kind `kind`'s module on (B, T, H, D) tensors: init gives its parameters, a call its output."""

  def __init__(self, kind: str, x_dim: int, num_heads: int, head_dim: int, seq_len: int):
    self.cfg = method_config(kind, x_dim, num_heads, head_dim, seq_len)
    self.module = method_class(self.cfg)(self.cfg)

  def init(self, key: Array, x_BTd: Array, q_BTHD: Array, k_BTHD: Array, v_BTHD: Array,
           seen: Visibility = Visibility()) -> dict[str, Any]:
    """The method's parameters (plain arrays, {} for a method without any), ready to train with optax."""
    variables = self.module.init(key, x_BTd, q_BTHD, k_BTHD, v_BTHD, seen, jnp.int32(0), None)
    return nn.meta.unbox(variables.get("params", {}))

  def __call__(self, params: dict[str, Any], x_BTd: Array, q_BTHD: Array, k_BTHD: Array, v_BTHD: Array,
               seen: Visibility = Visibility()) -> Array:
    """The method's output (B, T, H, D): a causal full forward by default (layer 0, no cache)."""
    out_BTHD, _ = self.module.apply({"params": params}, x_BTd, q_BTHD, k_BTHD, v_BTHD, seen, jnp.int32(0), None)
    return out_BTHD


def stack_heads(key: Array, w: Array, heads: int, scale: float) -> Array:
  """(heads, *w.shape): head 0 is `w` (the study's own initial matrix, so seeds pair), the others normal(scale)."""
  extra = [scale * jax.random.normal(k, w.shape) for k in jax.random.split(key, heads - 1)] if heads > 1 else []
  return jnp.stack([w, *extra])
