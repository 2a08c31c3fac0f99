"""Parameter utilities: layer layouts (scanned <-> unrolled), counts, SSA's temperature groups, shardings."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ssa_jax.errors import ConfigError
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.temperature import param_group

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


def uses_token_feature(cfg: ModelConfig) -> bool:
  """Whether the model holds the fixed token feature phi (the 'frequency' token term is on)."""
  return cfg.ssa.enabled and cfg.ssa.token and cfg.ssa.token_kind == "frequency"


def lm_head_kernel(params, cfg: ModelConfig) -> Array:
  """The LM head as a (d_model, vocab) float32 matrix: the embedding's transpose when tied."""
  if cfg.tie_embeddings:
    return params["embed"]["embedding"].T
  return params["lm_head"]["kernel"]


def init_params(cfg: ModelConfig, rng: Array, seq_len: int = 8) -> dict:
  """Fresh parameters (logical-partitioning boxes removed)."""
  tokens = jnp.zeros((1, min(seq_len, cfg.max_seq_len)), jnp.int32)
  variables = Decoder(cfg).init(rng, tokens)
  return nn.meta.unbox(variables["params"])


def param_shapes(cfg: ModelConfig) -> dict:
  """The parameter tree as ShapeDtypeStructs, without allocating (used to check imports)."""
  return jax.eval_shape(lambda r: init_params(cfg, r), jax.random.PRNGKey(0))


def count_params(params, where=lambda path: True) -> int:
  """Number of scalars in the leaves whose '/'-joined path satisfies `where`."""
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = "/".join(str(getattr(p, "key", p)) for p in path)
    if where(name):
      total += int(np.prod(leaf.shape))
  return total


TOKEN_FEATURE = "token_feature"  # the params key of the frequency token term's fixed phi table


def is_temperature_param(path: str) -> bool:
  """True for everything SSA adds: the parameters under an ssa_{q,k,v} temperature module and the fixed token
  feature (a buffer; see is_temperature_buffer). Exports and checkpoints carry all of it."""
  return re.search(r"(^|/)ssa_[qkv](/|$)", path) is not None or path.endswith(TOKEN_FEATURE)


def is_temperature_buffer(path: str) -> bool:
  """True for SSA's fixed, never-trained tensors (the frequency token term's phi table)."""
  return path.endswith(TOKEN_FEATURE)


def is_trainable_temperature(path: str) -> bool:
  """True for SSA's trained parameters: is_temperature_param without the buffers."""
  return is_temperature_param(path) and not is_temperature_buffer(path)


def temperature_group(path: str) -> str | None:
  """'scalar' / 'matrix' (the learning-rate groups of ssa_jax.model.temperature.param_group), 'buffer', or None for
  a parameter that is not SSA's."""
  if is_temperature_buffer(path):
    return "buffer"
  if not is_temperature_param(path):
    return None
  return param_group(path.rsplit("/", 1)[-1])


def ssa_param_counts(params) -> dict[str, int]:
  """{'params': every scalar, 'ssa_params': SSA's trainable ones, 'ssa_buffers': SSA's fixed ones (phi)}."""
  return {"params": count_params(params), "ssa_params": count_params(params, is_trainable_temperature),
          "ssa_buffers": count_params(params, is_temperature_buffer)}


def param_shardings(model_cfg: ModelConfig, mesh: Mesh, rules) -> Any:
  """NamedSharding for every parameter, from its logical axis names; checks divisibility up front."""
  boxed = jax.eval_shape(
      lambda r: Decoder(model_cfg).init(r, np.zeros((1, min(8, model_cfg.max_seq_len)), np.int32))["params"],
      jax.random.PRNGKey(0))
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
