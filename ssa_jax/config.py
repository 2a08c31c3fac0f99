"""Model configuration: frozen dataclasses built (and validated) from ml_collections ConfigDicts."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

FAMILIES = ("gpt2", "neox", "llama")
SSA_VARIANTS = ("base", "weight_sharing", "feature", "constant", "yarn")
ACTIVATIONS = ("gelu_tanh", "gelu", "silu")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
  """A configuration value is invalid; the message names the field."""


@dataclasses.dataclass(frozen=True)
class SSAConfig:
  """Selective Self-Attention switches (SSA.md): what is scaled, by which temperature function."""

  enabled: bool = False
  # Token-aware function f: 'base' (MLP), 'weight_sharing' (reuses W_q/W_k/W_v), 'feature' (token frequency).
  # Baselines replacing the whole temperature: 'constant' (learned per head), 'yarn' (1 + yarn_scale * log n).
  variant: str = "base"
  query: bool = True
  key: bool = False
  value: bool = True
  token: bool = True  # tau_tok = tanh(f(x)) on/off
  position: bool = True  # tau_pos = 1 + sigmoid(alpha) log(n) on/off (off: the constant 1 alone)
  hidden_ratio: float = 0.5  # base variant: MLP hidden width = round(d_model * hidden_ratio)
  # alpha is initialised so that tau_pos at the last position of the context (n = max_seq_len) equals this;
  # a value just above 1 (e.g. 1.001) gives the near-identity start used for fine-tuning.
  position_tau_at_end: float = 1.1
  yarn_scale: float = 0.1
  # 'feature' variant: token-count file (see ssa_jax.data.token_counts) giving the fixed feature phi(token).
  feature_path: str = ""

  @property
  def components(self) -> tuple[str, ...]:
    """The scaled projections, a subset of ('q', 'k', 'v')."""
    if not self.enabled:
      return ()
    return tuple(c for c, on in (("q", self.query), ("k", self.key), ("v", self.value)) if on)

  def alpha_init(self, max_seq_len: int) -> float:
    """Pre-sigmoid alpha such that 1 + sigmoid(alpha) * log(max_seq_len) == position_tau_at_end."""
    s = (self.position_tau_at_end - 1.0) / math.log(max(max_seq_len, 2))
    return math.log(s / (1.0 - s))


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style rotary frequency scaling (transformers' 'llama3' rope type)."""

  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """One decoder covering GPT-2, GPT-NeoX (Pythia) and Llama; `family` picks norms, MLP and positions."""

  family: str
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  max_seq_len: int
  num_kv_heads: int = 0  # 0: same as num_heads
  head_dim: int = 0  # 0: d_model // num_heads
  norm_eps: float = 1e-5
  activation: str = "gelu_tanh"
  rope_theta: float = 10000.0
  rotary_pct: float = 1.0  # fraction of each head's dims that rotate (Pythia: 0.25)
  rope_scaling: RopeScaling | None = None
  parallel_residual: bool = False  # GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x))
  tie_embeddings: bool = False
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  init_std: float = 0.02
  dtype: str = "float32"  # compute dtype; params are always float32
  attention_impl: str = "auto"  # 'auto': cudnn on GPU, xla elsewhere
  remat: str = "none"
  ssa: SSAConfig = dataclasses.field(default_factory=SSAConfig)

  def __post_init__(self):
    if self.num_kv_heads == 0:
      object.__setattr__(self, "num_kv_heads", self.num_heads)
    # head_dim stays 0 (and validate() names the field) when the heads do not divide the width.
    if self.head_dim == 0 and self.num_heads > 0 and self.d_model % self.num_heads == 0:
      object.__setattr__(self, "head_dim", self.d_model // self.num_heads)

  @property
  def norm(self) -> str:
    return "rmsnorm" if self.family == "llama" else "layernorm"

  @property
  def gated_mlp(self) -> bool:
    return self.family == "llama"

  @property
  def learned_positions(self) -> bool:
    return self.family == "gpt2"

  @property
  def rotary_dim(self) -> int:
    if self.learned_positions:
      return 0
    return int(self.head_dim * self.rotary_pct)

  def validate(self, where: str = "config.model") -> "ModelConfig":
    """Raises ConfigError naming the first bad field; returns self."""

    def bad(field: str, msg: str):
      raise ConfigError(f"{where}.{field}: {msg}")

    if self.family not in FAMILIES:
      bad("family", f"unknown family {self.family!r}; expected one of {FAMILIES}")
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "mlp_dim", "max_seq_len"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
        bad(name, f"expected a positive int, got {getattr(self, name)!r}")
    if self.head_dim <= 0:
      bad("num_heads", f"{self.num_heads} heads do not divide d_model={self.d_model} (and head_dim is not set)")
    if self.family != "llama" and self.head_dim * self.num_heads != self.d_model:
      bad("head_dim", f"family {self.family!r} needs num_heads * head_dim == d_model={self.d_model}")
    if self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads:
      bad("num_kv_heads", f"{self.num_kv_heads} KV heads do not divide num_heads={self.num_heads}")
    if self.family != "llama" and self.num_kv_heads != self.num_heads:
      bad("num_kv_heads", f"family {self.family!r} has no grouped-query attention")
    if self.rotary_dim % 2:
      bad("rotary_pct", f"rotary dims {self.rotary_dim} of head_dim {self.head_dim} must be even")
    if not 0.0 <= self.rotary_pct <= 1.0:
      bad("rotary_pct", f"expected a fraction in [0, 1], got {self.rotary_pct}")
    if self.activation not in ACTIVATIONS:
      bad("activation", f"unknown {self.activation!r}; expected one of {ACTIVATIONS}")
    if self.dtype not in DTYPES:
      bad("dtype", f"unknown {self.dtype!r}; expected one of {DTYPES}")
    if self.attention_impl not in ATTENTION_IMPLS:
      bad("attention_impl", f"unknown {self.attention_impl!r}; expected one of {ATTENTION_IMPLS}")
    if self.remat not in REMAT_POLICIES:
      bad("remat", f"unknown {self.remat!r}; expected one of {REMAT_POLICIES}")
    s = self.ssa
    if s.enabled:
      if s.variant not in SSA_VARIANTS:
        bad("ssa.variant", f"unknown SSA variant {s.variant!r}; expected one of {SSA_VARIANTS}")
      if not s.components:
        bad("ssa.query", "SSA is enabled but none of query/key/value is scaled")
      if s.variant in ("base", "weight_sharing", "feature") and not (s.token or s.position):
        bad("ssa.token", "SSA is enabled with both the token and the position term off")
      if s.position and s.variant in ("base", "weight_sharing", "feature"):
        frac = (s.position_tau_at_end - 1.0) / math.log(max(self.max_seq_len, 2))
        if not 0.0 < frac < 1.0:
          bad("ssa.position_tau_at_end", f"expected 1 < value < 1 + log(max_seq_len), got {s.position_tau_at_end}")
      if s.variant == "base" and int(round(self.d_model * s.hidden_ratio)) <= 0:
        bad("ssa.hidden_ratio", f"expected > 0, got {s.hidden_ratio}")
    return self


def _to_plain(value: Any) -> Any:
  if hasattr(value, "to_dict"):
    return value.to_dict()
  return value


def model_config_from_dict(cfg: Mapping[str, Any] | Any, where: str = "config.model") -> ModelConfig:
  """Builds and validates a ModelConfig from a ConfigDict / dict, rejecting unknown fields by name."""
  d = dict(_to_plain(cfg))
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(d) - known)
  if unknown:
    raise ConfigError(f"{where}: unknown field(s) {unknown}; known fields are {sorted(known)}")
  ssa = dict(_to_plain(d.pop("ssa", None)) or {})
  ssa_known = {f.name for f in dataclasses.fields(SSAConfig)}
  bad_ssa = sorted(set(ssa) - ssa_known)
  if bad_ssa:
    raise ConfigError(f"{where}.ssa: unknown field(s) {bad_ssa}; known fields are {sorted(ssa_known)}")
  rope = _to_plain(d.pop("rope_scaling", None))
  rope_cfg = RopeScaling(**dict(rope)) if rope else None
  return ModelConfig(**d, ssa=SSAConfig(**ssa), rope_scaling=rope_cfg).validate(where)


def model_config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
  """The inverse of model_config_from_dict (JSON-serialisable)."""
  return dataclasses.asdict(cfg)
