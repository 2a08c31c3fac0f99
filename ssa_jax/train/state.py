"""TrainState and its shardings: parameters by logical-axis rules, optimizer moments like their parameters."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssa_jax.config import ModelConfig
from ssa_jax.model import init_params, param_shapes
from ssa_jax.sharding import param_shardings


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32: optimizer steps taken (= batches consumed)
  params: Any
  opt_state: Any


def _key_path(path) -> tuple[str, ...]:
  return tuple(str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey))


def opt_state_shardings(opt_shapes, params_shardings, mesh: Mesh):
  """Each optimizer leaf takes the sharding of the parameter whose path ends its own (mu, nu...); else replicated."""
  by_path = {_key_path(p): s for p, s in jax.tree_util.tree_flatten_with_path(params_shardings)[0]}
  rep = NamedSharding(mesh, P())

  def pick(path, leaf):
    keys = _key_path(path)
    for start in range(len(keys)):
      s = by_path.get(keys[start:])
      if s is not None and len(s.spec) <= leaf.ndim:
        return s
    return rep

  return jax.tree_util.tree_map_with_path(pick, opt_shapes)


def state_shardings(model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, rules, params=None):
  """(abstract TrainState, its shardings). `params`: the parameter ShapeDtypeStructs if already at hand
  (model.param_shapes), which saves tracing the model's init again (seconds for 7B models)."""
  p_shard = param_shardings(model_cfg, mesh, rules)
  if params is None:
    params = param_shapes(model_cfg)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=jax.eval_shape(tx.init, params))
  shardings = TrainState(step=NamedSharding(mesh, P()), params=p_shard,
                         opt_state=opt_state_shardings(abstract.opt_state, p_shard, mesh))
  return abstract, shardings


def _fresh_state(model_cfg, tx, rng) -> TrainState:
  params = init_params(model_cfg, rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def create_state(model_cfg: ModelConfig, tx, shardings: TrainState, rng, params=None) -> TrainState:
  """A new state laid out by `shardings`: fresh parameters from `rng`, or the given (host) `params`."""
  if params is None:
    return jax.jit(lambda r: _fresh_state(model_cfg, tx, r), out_shardings=shardings)(rng)
  params = jax.device_put(params, shardings.params)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step), params=params, opt_state=opt_state)
