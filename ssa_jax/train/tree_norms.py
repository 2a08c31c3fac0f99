"""L2 norms of parameter-shaped trees (gradients, parameters, updates) by layer and by SSA temperature group,
logged every log step (config.train.layer_norms) to tune, e.g., the temperature learning-rate multipliers.

Names: '{kind}_norm/layers' (one value per decoder layer, scanned or not), '{kind}_norm/<module>' for every other
top-level module (embed, final_norm, lm_head, ...), '{kind}_norm/ssa_scalar' and '{kind}_norm/ssa_matrix' over
SSA's temperature parameters of every layer (model.params.ssa_groups).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import traverse_util

from ssa_jax.model.config import ModelConfig
from ssa_jax.model.params import ssa_groups


def _squares(x: jax.Array, per_layer: bool) -> jax.Array:
  """Sum of squares in float32: a scalar, or (L,) over all axes but a scanned leaf's leading layer axis."""
  x = x.astype(jnp.float32)
  return jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim))) if per_layer else jnp.sum(jnp.square(x))


def tree_norms(tree: dict, model_cfg: ModelConfig, kind: str) -> dict[str, jax.Array]:
  """{'{kind}_norm/layers': (L,), '{kind}_norm/<module>': (), '{kind}_norm/ssa_<group>': ()} of `tree`."""
  flat = traverse_util.flatten_dict(tree)
  groups = ssa_groups(model_cfg)
  layers = jnp.zeros((model_cfg.num_layers,), jnp.float32)
  modules: dict[str, jax.Array] = {}
  by_group = {f"ssa_{g}": jnp.zeros((), jnp.float32) for g in sorted(set(groups.values()))}
  for path, leaf in flat.items():
    top = path[0]
    if top == "layers":  # nn.scan: every leaf carries the layer axis first
      squares = _squares(leaf, per_layer=True)
      layers = layers + squares
      total = jnp.sum(squares)
    elif top.startswith("layers_"):
      total = _squares(leaf, per_layer=False)
      layers = layers.at[int(top[len("layers_"):])].add(total)
    else:
      total = _squares(leaf, per_layer=False)
      modules[top] = modules.get(top, 0.0) + total
    if path in groups:
      by_group[f"ssa_{groups[path]}"] = by_group[f"ssa_{groups[path]}"] + total
  squares = {"layers": layers, **modules, **by_group}
  return {f"{kind}_norm/{name}": jnp.sqrt(value) for name, value in squares.items()}
