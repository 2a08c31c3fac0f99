"""Parameter utilities: layer layouts (scanned <-> unrolled), the LM head, counts, SSA's groups, shardings."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from ssa_jax.errors import ConfigError
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.temperature import SSAParam

Array = jax.Array


def unstack_layers(tree: dict, num_layers: int) -> dict:
  """A params / intermediates tree with scanned layers ({'layers': leaves of shape (L, ...)}) as the unrolled
  layout ({'layers_0': ..., 'layers_{L-1}': ...}); a tree already unrolled is returned as it is."""
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


def unrolled(model: "Decoder", params: dict) -> tuple["Decoder", dict]:
  """The same model and parameters in the unrolled layer layout (for analyses that read layer by layer)."""
  if not model.config.scan_layers:
    return model, params
  cfg = dataclasses.replace(model.config, scan_layers=False)
  return Decoder(cfg), unstack_layers(params, cfg.num_layers)


def lm_head_kernel(params, cfg: ModelConfig) -> Array:
  """The LM head as a (d_model, vocab) float32 matrix: the embedding's transpose when tied."""
  if cfg.tie_embeddings:
    return params["embed"]["embedding"].T
  return params["lm_head"]["kernel"]


def lm_head(params, cfg: ModelConfig, h_Xd: Array) -> Array:
  """float32 logits (..., vocab) of final hidden states, computed as the Decoder's head does (in h's dtype)."""
  return jnp.dot(h_Xd, lm_head_kernel(params, cfg).astype(h_Xd.dtype)).astype(jnp.float32)


def init_params(cfg: ModelConfig, rng: Array, seq_len: int = 8) -> dict:
  """Fresh parameters (logical-partitioning boxes removed)."""
  tokens = jnp.zeros((1, min(seq_len, cfg.max_seq_len)), jnp.int32)
  variables = Decoder(cfg).init(rng, tokens)
  return nn.meta.unbox(variables["params"])


def param_shapes(cfg: ModelConfig) -> dict:
  """The parameter tree as ShapeDtypeStructs, without allocating (used to check imports)."""
  return jax.eval_shape(lambda r: init_params(cfg, r), jax.random.PRNGKey(0))


def boxed_param_shapes(cfg: ModelConfig) -> dict:
  """The parameter tree as ShapeDtypeStructs inside the boxes the modules declare them with (logical axes; for
  SSA's, an SSAParam naming the group), without allocating."""
  tokens = np.zeros((1, min(8, cfg.max_seq_len)), np.int32)
  return jax.eval_shape(lambda r: Decoder(cfg).init(r, tokens)["params"], jax.random.PRNGKey(0))


def ssa_groups(cfg: ModelConfig) -> dict[tuple[str, ...], str]:
  """Every variable SSA adds, by its path in cfg's parameter layout, with its group: 'scalar' / 'matrix' (the
  learned temperatures, by learning-rate group) or 'buffer' (phi, never trained); read from the SSAParam boxes
  of an abstract init, not from names. Optimizer labels, HF export / import and counts use it."""
  flat = traverse_util.flatten_dict(boxed_param_shapes(cfg))
  return {path: box.group for path, box in flat.items() if isinstance(box, SSAParam)}


def param_counts(cfg: ModelConfig) -> dict[str, int]:
  """{'params': every scalar, 'ssa_params': SSA's trained ones, 'ssa_buffers': SSA's fixed ones (phi)}."""
  flat = traverse_util.flatten_dict(boxed_param_shapes(cfg))
  sizes = {path: math.prod(getattr(leaf, "value", leaf).shape) for path, leaf in flat.items()}
  groups = {path: box.group for path, box in flat.items() if isinstance(box, SSAParam)}
  return {"params": sum(sizes.values()),
          "ssa_params": sum(sizes[p] for p, group in groups.items() if group != "buffer"),
          "ssa_buffers": sum(sizes[p] for p, group in groups.items() if group == "buffer")}


def count_params(params, where=lambda path: True) -> int:
  """Number of scalars in the leaves whose '/'-joined path satisfies `where`."""
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = "/".join(str(getattr(p, "key", p)) for p in path)
    if where(name):
      total += int(np.prod(leaf.shape))
  return total


def param_shardings(model_cfg: ModelConfig, mesh: Mesh, rules) -> Any:
  """NamedSharding for every parameter, from its logical axis names; checks divisibility up front."""
  boxed = boxed_param_shapes(model_cfg)
  specs = nn.get_partition_spec(boxed)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  shapes = nn.meta.unbox(boxed)

  def check(path, shape, sharding):
    for dim, axes in zip(shape.shape, sharding.spec):
      if axes is None:
        continue
      size = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
      if dim % size:
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        raise ConfigError(f"config.sharding.rules: parameter {name} dim {dim} is split over {axes} "
                          f"({size} devices), which does not divide it")

  jax.tree_util.tree_map_with_path(check, shapes, shardings)
  return shardings
