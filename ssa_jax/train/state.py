"""TrainState and its shardings: parameters and buffers by logical-axis rules, optimizer moments like their
parameters."""

from __future__ import annotations

import warnings
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssa_jax.data.token_counts import load_token_feature
from ssa_jax.errors import ConfigError
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.decoder import BUFFERS, TOKEN_FEATURE, uses_token_feature
from ssa_jax.model.params import boxed_variable_shapes, init_variables, variable_shardings


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32: optimizer steps taken (= batches consumed)
  params: Any
  buffers: Any  # the model's fixed arrays (the frequency term's phi); {} when it has none
  opt_state: Any

  @property
  def variables(self) -> dict:
    """The Flax variables the model is applied with."""
    return {"params": self.params, BUFFERS: self.buffers}


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


def state_shardings(model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, rules):
  """(abstract TrainState, its shardings)."""
  boxed = boxed_variable_shapes(model_cfg)
  shapes, shards = nn.meta.unbox(boxed), variable_shardings(boxed, mesh, rules)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=shapes["params"], buffers=shapes[BUFFERS],
                        opt_state=jax.eval_shape(tx.init, shapes["params"]))
  shardings = TrainState(step=NamedSharding(mesh, P()), params=shards["params"], buffers=shards[BUFFERS],
                         opt_state=opt_state_shardings(abstract.opt_state, shards["params"], mesh))
  return abstract, shardings


def token_feature(model_cfg: ModelConfig):
  """phi of the frequency token term, float32 [vocab_size], from config.model.ssa.feature_path; None when the
  model has no token feature or no file is named (the model's own init is then 0; training refuses that)."""
  path = model_cfg.ssa.feature_path
  if not uses_token_feature(model_cfg) or not path:
    return None
  try:
    return load_token_feature(path, model_cfg.vocab_size)
  except (OSError, ValueError) as e:
    raise ConfigError(f"config.model.ssa.feature_path: {e}") from e


def create_state(model_cfg: ModelConfig, tx, shardings: TrainState, rng, variables=None) -> TrainState:
  """A new state laid out by `shardings`: fresh variables from `rng`, or the given (host) `variables` (a
  pretrained checkpoint: a fine-tune). The frequency token term's phi is read from config.model.ssa.feature_path
  here, on the training side (the model initialises it to 0; checkpoints restore it)."""
  if variables is None:  # initialised where each shard lives
    variables = jax.jit(lambda r: init_variables(model_cfg, r), out_shardings=shardings.variables)(rng)
  elif model_cfg.ssa.enabled and model_cfg.ssa.position and model_cfg.ssa.position_kind == "ssmax":
    start = ", ".join(f"tau({n}) = {tau:.4g}" for n, tau in model_cfg.ssa.ssmax_start(model_cfg.max_seq_len).items())
    warnings.warn(f"config.model.ssa.position_kind='ssmax' in a fine-tune: SSMax has no near-identity start "
                  f"(tau_q = s log n starts at {start}), so the pretrained model's attention is changed from step 0",
                  stacklevel=2)
  phi = token_feature(model_cfg)
  if phi is not None:
    variables = {**variables, BUFFERS: {**variables[BUFFERS], TOKEN_FEATURE: jnp.asarray(phi, jnp.float32)}}
  variables = jax.device_put(variables, shardings.variables)
  return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step), params=variables["params"],
                    buffers=variables[BUFFERS],
                    opt_state=jax.jit(tx.init, out_shardings=shardings.opt_state)(variables["params"]))
