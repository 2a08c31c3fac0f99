"""Model architecture presets (the paper's Table 3 models plus a tiny demo model), SSA and attention variants."""

import dataclasses

import ml_collections

from ssa_jax.model.config import ModelConfig, SSAConfig

# Field names are those of ssa_jax.model.config.ModelConfig; a field not named keeps its default.
NEOX = dict(family="neox", rotary_pct=0.25, parallel_residual=True, qkv_bias=True, out_bias=True, mlp_bias=True,
            activation="gelu")
LLAMA = dict(family="llama", activation="silu")
MODELS = {
    # The embedded demo: a Pythia-shaped (GPT-NeoX) model small enough to train on a laptop CPU in minutes.
    "tiny": dict(NEOX, vocab_size=2048, d_model=128, num_layers=4, num_heads=4, mlp_dim=512, max_seq_len=256),
    "gpt2": dict(family="gpt2", vocab_size=50257, d_model=768, num_layers=12, num_heads=12, mlp_dim=3072,
                 max_seq_len=1024, tie_embeddings=True, qkv_bias=True, out_bias=True, mlp_bias=True),
    "pythia160m": dict(NEOX, vocab_size=50304, d_model=768, num_layers=12, num_heads=12, mlp_dim=3072,
                       max_seq_len=2048),
    "pythia410m": dict(NEOX, vocab_size=50304, d_model=1024, num_layers=24, num_heads=16, mlp_dim=4096,
                       max_seq_len=2048),
    "llama2_7b": dict(LLAMA, vocab_size=32000, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                      mlp_dim=11008, max_seq_len=4096),
    # Meta-Llama-3-8B exactly (8192 positions, rope theta 500000, no rope scaling).
    "llama3_8b": dict(LLAMA, vocab_size=128256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                      mlp_dim=14336, max_seq_len=8192, rope_theta=500000.0),
    # Llama-3.1-8B: Llama-3's shapes with 131072 positions through the 'llama3' rope scaling.
    "llama31_8b": dict(LLAMA, vocab_size=128256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                       mlp_dim=14336, max_seq_len=131072, rope_theta=500000.0,
                       rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_position_embeddings=8192)),
}

# SSA presets (docs/ssa.md); fields are SSAConfig's, and a field not named keeps its default below.
SSA_VARIANTS = {
    "vanilla": dict(enabled=False),
    "ssa": dict(enabled=True, token_kind="mlp", position_kind="log"),  # the paper's SSA "base"
    "ssa_ws": dict(enabled=True, token_kind="shared", position_kind="log"),  # weight sharing
}

# Attention-method presets (docs/methods.md): a comparison variant's part -> config.model.attention_kind. A variant
# name is '+'-joined parts, at most one of SSA_VARIANTS and one of these (e.g. 'ssa+gated').
ATTENTION_VARIANTS = {
    "gated": "gated_element",  # the per-element gate the gated-attention paper recommends (Qwen3-Next's)
    "gated_head": "gated_head",
    "diff": "differential",
    "fox": "forgetting",
    "leviathan": "leviathan",
}

# Every other field's default, read from the dataclasses (stated once, there).
SSA_DEFAULTS = dataclasses.asdict(SSAConfig())
MODEL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)
                  if f.default is not dataclasses.MISSING and f.name != "ssa"}


def model_config(name: str, ssa: str = "vanilla") -> ml_collections.ConfigDict:
  """The `config.model` section for preset `name` with SSA variant `ssa` ('vanilla', 'ssa', 'ssa_ws')."""
  if name not in MODELS:
    raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(MODELS)}")
  if ssa not in SSA_VARIANTS:
    raise ValueError(f"unknown SSA preset {ssa!r}; expected one of {sorted(SSA_VARIANTS)}")
  fields = {**MODEL_DEFAULTS, **MODELS[name]}
  cfg = ml_collections.ConfigDict(fields)
  if fields["rope_scaling"] is None:
    # A placeholder typed as a dict so that --config.model.rope_scaling can still be set from the command line.
    cfg.rope_scaling = ml_collections.FieldReference(None, field_type=dict)
  cfg.ssa = ml_collections.ConfigDict({**SSA_DEFAULTS, **SSA_VARIANTS[ssa]})
  return cfg
