"""AdamW with warmup + cosine/constant schedules, decay masks, temperature LR multipliers, freezing."""

from __future__ import annotations

import jax
import ml_collections
import optax
from flax import traverse_util

from ssa_jax.errors import ConfigError
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.params import ssa_groups
from ssa_jax.train.sections import OptimSection, TrainSection, optim_section


def learning_rate_schedule(train: TrainSection | OptimSection | ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at `steps`, or constant."""
  t = optim_section(train)
  lr, warmup = t.lr, t.warmup_steps
  warm = optax.linear_schedule(0.0 if warmup else lr, lr, max(warmup, 1))
  if t.schedule == "constant":
    after = optax.constant_schedule(lr)
  else:
    after = optax.cosine_decay_schedule(lr, max(t.steps - warmup, 1), alpha=t.min_lr_ratio)
  return optax.join_schedules([warm, after], [warmup])


def param_labels(params, model_cfg: ModelConfig, temperatures_only: bool) -> dict:
  """'temp_scalar' / 'temp_matrix' (SSA temperatures: single learned scalars / matrices and their biases),
  'decay' (matrices, embeddings), 'no_decay' (norms, biases), 'frozen' (with temperatures_only, everything that
  is not a temperature). SSA's groups come from the model's declarations (model.params.ssa_groups), not from
  names."""
  groups = ssa_groups(model_cfg)

  def label(path: tuple[str, ...], leaf) -> str:
    group = groups.get(path)
    if group is not None:
      return f"temp_{group}"
    if temperatures_only:
      return "frozen"
    # Under scan_layers a layer's leaves carry a leading layer axis: a stacked bias is still a vector.
    ndim = leaf.ndim - (path[0] == "layers")
    if path[-1] == "bias" or "norm" in path[-2] or ndim < 2:
      return "no_decay"
    return "decay"

  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({p: label(p, v) for p, v in flat.items()})


def make_optimizer(train: TrainSection | OptimSection | ml_collections.ConfigDict,
                   params, model_cfg: ModelConfig) -> optax.GradientTransformation:
  """The full gradient transformation; frozen parameters get no update and hold no optimizer state."""
  t = optim_section(train)
  schedule = learning_rate_schedule(t)
  scalar_mult, matrix_mult = t.temperature_scalar_lr_multiplier, t.temperature_matrix_lr_multiplier

  def adamw(lr, weight_decay):
    return optax.adamw(lr, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=weight_decay)

  labels = param_labels(params, model_cfg, t.temperatures_only)
  if not any(l != "frozen" for l in jax.tree_util.tree_leaves(labels)):
    raise ConfigError("config.train.temperatures_only: the model has no SSA temperature parameters to train")
  return optax.chain(
      # Zero frozen gradients first so that clipping measures only what is trained.
      optax.multi_transform({"train": optax.identity(), "frozen": optax.set_to_zero()},
                            jax.tree_util.tree_map(lambda l: "frozen" if l == "frozen" else "train", labels)),
      optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity(),
      optax.multi_transform(
          {
              "decay": adamw(schedule, t.weight_decay),
              "no_decay": adamw(schedule, 0.0),
              "temp_scalar": adamw(lambda step: schedule(step) * scalar_mult, 0.0),
              "temp_matrix": adamw(lambda step: schedule(step) * matrix_mult, 0.0),
              "frozen": optax.set_to_zero(),
          },
          labels,
      ),
  )
