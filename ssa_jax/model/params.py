"""Parameter utilities: layer layouts (scanned <-> unrolled), the LM head, counts, SSA's groups, shardings."""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.sharding import Mesh

from ssa_jax.errors import ConfigError
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.decoder import BUFFERS, Decoder
from ssa_jax.model.methods.base import MethodParam
from ssa_jax.model.temperature import SSAParam

Array = jax.Array


def unstack_layers(tree: dict, num_layers: int) -> dict:
  """A params / intermediates tree with scanned layers ({'layers': leaves (L, ...)}) in the unrolled layout
  ({'layers_0': ..., 'layers_{L-1}': ...}); a tree already unrolled is returned as it is."""
  if "layers" not in tree:
    return tree
  out = {k: v for k, v in tree.items() if k != "layers"}
  for i in range(num_layers):
    out[f"layers_{i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], tree["layers"])
  return out


def stack_layers(tree: dict, num_layers: int) -> dict:
  """The inverse of unstack_layers: 'layers_0' ... 'layers_{L-1}' stacked into 'layers' (leading layer axis)."""
  if "layers_0" not in tree:
    return tree
  out = {k: v for k, v in tree.items() if not (k.startswith("layers_") and k[7:].isdigit())}
  out["layers"] = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[tree[f"layers_{i}"] for i in range(num_layers)])
  return out


def unrolled(model: Decoder, variables: dict) -> tuple[Decoder, dict]:
  """The same model and variables in the unrolled layer layout (for analyses that read layer by layer)."""
  if not model.config.scan_layers:
    return model, variables
  cfg = dataclasses.replace(model.config, scan_layers=False)
  return Decoder(cfg), {**variables, "params": unstack_layers(variables["params"], cfg.num_layers)}


def lm_head_kernel(params, cfg: ModelConfig) -> Array:
  """The LM head as a (d_model, vocab) float32 matrix: the embedding's transpose when tied."""
  return params["embed"]["embedding"].T if cfg.tie_embeddings else params["lm_head"]["kernel"]


def lm_head(params, cfg: ModelConfig, h_Xd: Array) -> Array:
  """float32 logits (..., vocab) of final hidden states, computed as the Decoder's head does (in h's dtype)."""
  return jnp.dot(h_Xd, lm_head_kernel(params, cfg).astype(h_Xd.dtype)).astype(jnp.float32)


def _boxed_init(cfg: ModelConfig, rng: Array) -> dict:
  """{'params', 'buffers'} as the modules declare them, in their boxes ('buffers' empty for a model without phi)."""
  return {BUFFERS: {}, **Decoder(cfg).init(rng, jnp.zeros((1, min(8, cfg.max_seq_len)), jnp.int32))}


def init_variables(cfg: ModelConfig, rng: Array) -> dict:
  """Fresh {'params': ..., 'buffers': ...} (logical-partitioning boxes removed; phi, the one buffer, is 0)."""
  return nn.meta.unbox(_boxed_init(cfg, rng))


def boxed_variable_shapes(cfg: ModelConfig) -> dict:
  """{'params', 'buffers'} as ShapeDtypeStructs inside their boxes (logical axes; for SSA's parameters, an
  SSAParam naming the group), without allocating."""
  return jax.eval_shape(lambda r: _boxed_init(cfg, r), jax.random.PRNGKey(0))


def variable_shapes(cfg: ModelConfig) -> dict:
  """{'params', 'buffers'} as ShapeDtypeStructs, without allocating (restore targets, import checks)."""
  return nn.meta.unbox(boxed_variable_shapes(cfg))


def param_shapes(cfg: ModelConfig) -> dict:
  """The parameter tree as ShapeDtypeStructs, without allocating."""
  return variable_shapes(cfg)["params"]


def ssa_groups(cfg: ModelConfig) -> dict[tuple[str, ...], str]:
  """{path in cfg's parameter layout: learning-rate group} of every parameter SSA adds, read from the SSAParam
  boxes of an abstract init, not from names."""
  flat = traverse_util.flatten_dict(boxed_variable_shapes(cfg)["params"])
  return {path: box.group for path, box in flat.items() if isinstance(box, SSAParam)}


def param_counts(cfg: ModelConfig) -> dict[str, int]:
  """{'params': every scalar (buffers included), 'ssa_params': SSA's trained ones, 'ssa_buffers': the buffers',
  'attention_method_params': those config.model.attention_kind adds (0 for 'softmax')}, read from the boxes."""
  boxed = boxed_variable_shapes(cfg)
  boxes = traverse_util.flatten_dict(boxed["params"]).values()
  ssa = [box for box in boxes if isinstance(box, SSAParam)]
  method = [box for box in boxes if isinstance(box, MethodParam)]
  buffers = count_params(boxed[BUFFERS])
  return {"params": count_params(boxed["params"]) + buffers, "ssa_params": count_params(ssa), "ssa_buffers": buffers,
          "attention_method_params": count_params(method)}


def count_params(tree) -> int:
  """Number of scalars in the leaves of `tree` (arrays or ShapeDtypeStructs, boxed or not)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def variable_shardings(boxed: dict, mesh: Mesh, rules) -> dict:
  """NamedSharding for every parameter and buffer of `boxed` (boxed_variable_shapes), from its logical axis names;
  checks divisibility up front."""
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)

  def check(path, shape, sharding):
    for dim, axes in zip(shape.shape, sharding.spec):
      if axes is None:
        continue
      size = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
      if dim % size:
        name = "/".join(str(getattr(p, "key", p)) for p in path[1:])  # without the collection's name
        raise ConfigError(f"config.sharding.rules: parameter {name} dim {dim} is split over {axes} "
                          f"({size} devices), which does not divide it")

  jax.tree_util.tree_map_with_path(check, nn.meta.unbox(boxed), shardings)
  return shardings
