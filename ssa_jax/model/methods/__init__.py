"""Attention methods beside plain softmax (config.model.attention_kind; docs/methods.md has each one's formula,
parameters, kernel and cost). ssa_jax.model.methods.base states the contract a method's module keeps; adding a
method is its module, a row in METHODS and in model/config.py's ATTENTION_KINDS, and its docs row."""

from __future__ import annotations

import flax.linen as nn

from ssa_jax.model.config import ModelConfig
from ssa_jax.model.methods.differential import Differential
from ssa_jax.model.methods.forgetting import Forgetting
from ssa_jax.model.methods.gated import Gated
from ssa_jax.model.methods.leviathan import Leviathan
from ssa_jax.model.methods.softmax import Softmax

# attention_kind -> the method's module class (ATTENTION_KINDS in model/config.py lists the same names).
METHODS: dict[str, type[nn.Module]] = {
    "softmax": Softmax,
    "gated_head": Gated,
    "gated_element": Gated,
    "differential": Differential,
    "forgetting": Forgetting,
    "leviathan": Leviathan,
}


def method_class(cfg: ModelConfig) -> type[nn.Module]:
  """The module class of cfg.attention_kind (validated against ATTENTION_KINDS when the config was built)."""
  return METHODS[cfg.attention_kind]
