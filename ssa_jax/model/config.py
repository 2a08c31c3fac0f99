"""Model configuration: frozen dataclasses built (and validated) from ml_collections ConfigDicts.

Array names carry their shape as a suffix (x_BTd, k_BSKD), one letter a dimension, each letter one meaning
across the package:
  B batch rows        T positions (queries)     S key positions (T, or a KV cache's length)
  d d_model           H query heads             K KV heads        G query heads per KV head (H // K)
  D head_dim          F hidden width (the MLP's, the token temperature's)              V vocabulary
  L layers            X positions flattened over rows
  A RoPE's rotation angles (rotary_dim // 2)    P rotary dims (rotary_dim)
and in evaluation (ssa_jax.evaluate.scoring): R rows of a batch, C devices, N LM-head positions, E scored
entries and Q request slots of one device.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from ssa_jax.errors import ConfigError

FAMILIES = ("gpt2", "neox", "llama")
# SSA's two temperature terms, chosen independently (docs/ssa.md; every row of the paper's Table 8 is one pair).
TOKEN_KINDS = ("mlp", "shared", "frequency")
POSITION_KINDS = ("log", "yarn", "constant", "ssmax", "llama4", "logn")
QUERY_ONLY_POSITION_KINDS = ("yarn", "constant", "ssmax", "llama4", "logn")  # logit temperatures in their sources
WEIGHT_SHARING_SCOPES = ("layer", "head")
ACTIVATIONS = ("gelu_tanh", "gelu", "silu")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")
# The attention method (docs/methods.md; its module in ssa_jax.model.methods): plain softmax, Qiu et al.'s output
# gate, Ye et al.'s differential attention, Lin et al.'s forgetting attention, Leviathan et al.'s selective attention.
ATTENTION_KINDS = ("softmax", "gated_head", "gated_element", "differential", "forgetting", "leviathan")
XLA_ONLY_ATTENTION_KINDS = ("forgetting", "leviathan")  # a (query, key) term no fused kernel here takes
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")


def _check_choices(section: Any, where: str, **choices: tuple[str, ...]) -> None:
  """Raises ConfigError naming the first field of `section` whose value is not one of its choices."""
  for field, allowed in choices.items():
    value = getattr(section, field)
    if value not in allowed:
      raise ConfigError(f"{where}.{field}: unknown {value!r}; expected one of {allowed}")


def _fields(cls: type, d: Mapping[str, Any], where: str) -> dict[str, Any]:
  """`d` as a dict, rejecting fields that dataclass `cls` does not have by name."""
  d = dict(d)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - known)
  if unknown:
    raise ConfigError(f"{where}: unknown field(s) {unknown}; known fields are {sorted(known)}")
  return d


@dataclasses.dataclass(frozen=True)
class SSAConfig:
  """Selective Self-Attention switches: what is scaled, and by which token and position terms.

  tau(x, n) = tau_tok(x) + tau_pos(n), one float32 scalar per token per head, multiplying q / k / v; docs/ssa.md
  gives every token_kind's and position_kind's formula, parameters and start.
  """

  enabled: bool = False
  query: bool = True
  key: bool = False
  value: bool = True
  token: bool = True  # the token term on/off
  position: bool = True  # the position term on/off (off: the constant 1)
  token_kind: str = "mlp"
  position_kind: str = "log"
  # 'shared' token kind: W_tmp holds, per head, one vector as wide as the layer's whole projection ('layer', the
  # paper's: "3 vectors per attention head") or as wide as the head's own slice of it ('head').
  weight_sharing_scope: str = "layer"
  hidden_ratio: float = 0.5  # 'mlp' token kind: hidden width = round(d_model * hidden_ratio)
  # The learned position coefficient starts so that the position term at n = position_reference_len equals
  # this ('log' and 'ssmax'); just above 1 (1.001) is the near-identity fine-tune start.
  position_tau_at_end: float = 1.1
  # The position the start above is pinned at: the training window (configs/base.py sets it to train.seq_len,
  # the paper's context window); 0 = the model's max_seq_len (checkpoints and exports made before this field).
  # Only the initial value of alpha / a depends on it: a trained or imported coefficient is restored as it is.
  # 'logn' reads it as Qwen's training length L: max(1, ln n / ln L).
  position_reference_len: int = 0
  # 'yarn': YaRN scales q and k each by sqrt(1/t) = 0.1 ln s + 1 (so the logits by its square); s is read as
  # the position n and the square goes on the query alone (a logit temperature of the query's position).
  yarn_scale: float = 0.1
  # 'llama4' (Llama-4's attention temperature tuning; transformers' Llama4 attn_scale / floor_scale defaults).
  llama4_floor_scale: float = 8192.0
  llama4_attn_scale: float = 0.1
  # 'frequency' token kind: token-count file (python -m ssa_jax.data.token_counts) giving phi(token).
  feature_path: str = ""

  @property
  def components(self) -> tuple[str, ...]:
    """The scaled projections, a subset of ('q', 'k', 'v')."""
    return tuple(c for c, on in (("q", self.query), ("k", self.key), ("v", self.value)) if on and self.enabled)

  def position_acts_on(self, component: str) -> bool:
    """Whether the position term (when on) varies for `component` ('q', 'k', 'v'); else it is the constant 1."""
    return self.position and (component == "q" or self.position_kind not in QUERY_ONLY_POSITION_KINDS)

  def reference_len(self, max_seq_len: int) -> int:
    """The position n at which the learned position term starts at position_tau_at_end (at least 2)."""
    return max(self.position_reference_len or max_seq_len, 2)

  def alpha_init(self, max_seq_len: int) -> float:
    """'log': pre-sigmoid alpha such that 1 + sigmoid(alpha) * log(reference_len) == position_tau_at_end."""
    s = (self.position_tau_at_end - 1.0) / math.log(self.reference_len(max_seq_len))
    return math.log(s / (1.0 - s))

  def ssmax_init(self, max_seq_len: int) -> float:
    """'ssmax': pre-softplus a such that softplus(a) * log(reference_len) == position_tau_at_end."""
    s = self.position_tau_at_end / math.log(self.reference_len(max_seq_len))
    return math.log(math.expm1(s))

  def ssmax_start(self, max_seq_len: int) -> dict[int, float]:
    """'ssmax': the initial tau_q = s log n at n = 2, 64 and reference_len (it has no near-identity start)."""
    ref = self.reference_len(max_seq_len)
    s = self.position_tau_at_end / math.log(ref)
    return {n: s * math.log(n) for n in (2, 64, ref)}

  def validate(self, max_seq_len: int, d_model: int, where: str = "config.model.ssa") -> None:
    """Raises ConfigError naming the first field that is unknown or part of a combination that means nothing."""

    def bad(field: str, msg: str):
      raise ConfigError(f"{where}.{field}: {msg}")

    _check_choices(self, where, token_kind=TOKEN_KINDS, position_kind=POSITION_KINDS,
                   weight_sharing_scope=WEIGHT_SHARING_SCOPES)
    if not self.enabled:
      return
    if not self.components:
      bad("query", "SSA is enabled but none of query / key / value is scaled")
    if not (self.token or self.position):
      bad("token", "SSA is enabled with both the token and the position term off")
    for comp, field in (("k", "key"), ("v", "value")):
      if comp in self.components and not self.token and not self.position_acts_on(comp):
        bad(field, f"scales {comp} by the constant 1: the token term is off and position_kind "
                   f"{self.position_kind!r} acts on the query only")
    if self.position and self.position_kind in QUERY_ONLY_POSITION_KINDS and not self.query:
      bad("position_kind", f"{self.position_kind!r} is a query (logit) temperature but query scaling is off")
    if not isinstance(self.position_reference_len, int) or self.position_reference_len < 0:
      bad("position_reference_len", f"expected an int >= 0 (0: model.max_seq_len), got {self.position_reference_len!r}")
    if self.position and self.position_kind == "log":
      frac = (self.position_tau_at_end - 1.0) / math.log(self.reference_len(max_seq_len))
      if not 0.0 < frac < 1.0:
        bad("position_tau_at_end", f"expected 1 < value < 1 + log(position_reference_len), got "
                                   f"{self.position_tau_at_end}")
    if self.position and self.position_kind == "ssmax" and not self.position_tau_at_end > 0:
      bad("position_tau_at_end", f"expected > 0 for 'ssmax', got {self.position_tau_at_end}")
    if self.position and self.position_kind == "yarn" and self.yarn_scale < 0:
      bad("yarn_scale", f"expected >= 0, got {self.yarn_scale}")
    if self.position and self.position_kind == "llama4":
      if not self.llama4_floor_scale > 0:
        bad("llama4_floor_scale", f"expected > 0, got {self.llama4_floor_scale}")
      if self.llama4_attn_scale < 0:
        bad("llama4_attn_scale", f"expected >= 0, got {self.llama4_attn_scale}")
    if self.token and self.token_kind == "mlp" and int(round(d_model * self.hidden_ratio)) <= 0:
      bad("hidden_ratio", f"expected > 0, got {self.hidden_ratio}")


def ssa_config_from_dict(d: Mapping[str, Any], where: str = "config.model.ssa") -> SSAConfig:
  """An SSAConfig from a dict, rejecting unknown fields by name."""
  return SSAConfig(**_fields(SSAConfig, d, where))


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
  attention_impl: str = "auto"  # 'auto': splash on TPU, cuDNN for bf16 / fp16 on GPU, XLA otherwise
  # 'softmax'; 'gated_head' / 'gated_element' (an output gate); 'differential', 'forgetting', 'leviathan'
  # (docs/methods.md has each one's formula, parameters and kernel)
  attention_kind: str = "softmax"
  # 'splash' (the Pallas TPU kernel): query / key-value block sizes of its forward and backward passes
  # (multiples of 128; a block larger than the sequence is clipped to it).
  splash_block_q: int = 512
  splash_block_kv: int = 512
  remat: str = "none"
  # Layers under nn.scan: one compiled block whatever the depth; parameters stacked as params["layers"] with a
  # leading layer axis (checkpoints record it through this field; ssa_jax.model.params.{stack,unstack}_layers convert).
  scan_layers: bool = False
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
    return 0 if self.learned_positions else int(self.head_dim * self.rotary_pct)

  def validate(self, where: str = "config.model") -> "ModelConfig":
    """Raises ConfigError naming the first bad field; returns self."""

    def bad(field: str, msg: str):
      raise ConfigError(f"{where}.{field}: {msg}")

    _check_choices(self, where, family=FAMILIES)
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
    _check_choices(self, where, activation=ACTIVATIONS, dtype=DTYPES, attention_impl=ATTENTION_IMPLS,
                   attention_kind=ATTENTION_KINDS)
    for name in ("splash_block_q", "splash_block_kv"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0 or getattr(self, name) % 128:
        bad(name, f"expected a positive multiple of 128, got {getattr(self, name)!r}")
    _check_choices(self, where, remat=REMAT_POLICIES)
    if self.attention_kind in XLA_ONLY_ATTENTION_KINDS and self.attention_impl not in ("auto", "xla"):
      bad("attention_impl", f"attention_kind {self.attention_kind!r} runs XLA on every backend (no fused kernel "
                            f"takes its per-(query, key) term; docs/methods.md): use 'auto' or 'xla', not "
                            f"{self.attention_impl!r}")
    if self.attention_kind == "differential" and (self.num_heads % 2 or self.num_kv_heads % 2):
      bad("num_heads", f"attention_kind 'differential' pairs heads (two softmax maps a head): num_heads "
                       f"{self.num_heads} and num_kv_heads {self.num_kv_heads} must be even")
    self.ssa.validate(self.max_seq_len, self.d_model, where=f"{where}.ssa")
    if self.attention_impl == "cudnn" and self.dtype == "float32":
      bad("attention_impl", "'cudnn' takes bfloat16 / float16 only; use dtype='bfloat16' or attention_impl='auto' "
                            "(cuDNN for bf16 / fp16 on GPU, XLA otherwise)")
    return self


def _to_plain(value: Any) -> Any:
  return value.to_dict() if hasattr(value, "to_dict") else value


def model_config_from_dict(cfg: Mapping[str, Any] | Any, where: str = "config.model") -> ModelConfig:
  """Builds and validates a ModelConfig from a ConfigDict / dict, rejecting unknown fields by name."""
  d = _fields(ModelConfig, _to_plain(cfg), where)
  ssa = ssa_config_from_dict(_to_plain(d.pop("ssa", None)) or {}, where=f"{where}.ssa")
  rope = _to_plain(d.pop("rope_scaling", None))
  rope_cfg = RopeScaling(**dict(rope)) if rope else None
  return ModelConfig(**d, ssa=ssa, rope_scaling=rope_cfg).validate(where)
