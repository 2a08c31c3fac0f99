"""TrainState and its shardings: parameters by logical-axis rules, optimizer moments like their parameters."""

from __future__ import annotations

import warnings
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssa_jax.data.token_counts import load_token_feature
from ssa_jax.errors import ConfigError
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.decoder import TOKEN_FEATURE, uses_token_feature
from ssa_jax.model.params import init_params, param_shapes, param_shardings


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


def warn_if_ssmax_from_pretrained(model_cfg: ModelConfig) -> None:
  """One warning line: SSMax (tau_q = s log n, no "1 +") cannot start a pretrained model near identity."""
  ssa = model_cfg.ssa
  if not (ssa.enabled and ssa.position and ssa.position_kind == "ssmax"):
    return
  start = ", ".join(f"tau({n}) = {tau:.4g}" for n, tau in ssa.ssmax_start(model_cfg.max_seq_len).items())
  warnings.warn(f"config.model.ssa.position_kind='ssmax' in a fine-tune: SSMax has no near-identity start "
                f"(tau_q = s log n starts at {start}), so the pretrained model's attention is changed from step 0",
                stacklevel=2)


def _with_feature(params, phi):
  if phi is None:
    return params
  return {**params, TOKEN_FEATURE: jnp.asarray(phi, jnp.float32)}


def _fresh_state(model_cfg, tx, rng, phi=None) -> TrainState:
  params = _with_feature(init_params(model_cfg, rng), phi)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def create_state(model_cfg: ModelConfig, tx, shardings: TrainState, rng, params=None) -> TrainState:
  """A new state laid out by `shardings`: fresh parameters from `rng`, or the given (host) `params` (a
  pretrained checkpoint: a fine-tune). The frequency token term's phi is read from config.model.ssa.feature_path
  here, on the training side (the model initialises it to 0; checkpoints restore it)."""
  phi = token_feature(model_cfg)
  if params is None:
    return jax.jit(lambda r, f: _fresh_state(model_cfg, tx, r, f), out_shardings=shardings)(rng, phi)
  warn_if_ssmax_from_pretrained(model_cfg)
  params = jax.device_put(_with_feature(params, phi), shardings.params)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step), params=params, opt_state=opt_state)
