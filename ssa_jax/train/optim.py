"""AdamW with warmup + cosine/constant schedules, decay masks, temperature LR multipliers, freezing."""

from __future__ import annotations

import jax
import optax
from flax import traverse_util

from ssa_jax.errors import ConfigError
from ssa_jax.model.params import temperature_group

SCHEDULES = ("cosine", "constant")
# The one temperature multiplier of earlier releases and the two that replaced it.
_REPLACED = {"temperature_lr_multiplier": ("temperature_scalar_lr_multiplier", "temperature_matrix_lr_multiplier")}


def learning_rate_schedule(train_cfg) -> optax.Schedule:
  """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at `steps`, or constant."""
  lr, warmup, steps = float(train_cfg.lr), int(train_cfg.warmup_steps), int(train_cfg.steps)
  if train_cfg.schedule not in SCHEDULES:
    raise ConfigError(f"config.train.schedule: unknown {train_cfg.schedule!r}; expected one of {SCHEDULES}")
  warm = optax.linear_schedule(0.0 if warmup else lr, lr, max(warmup, 1))
  if train_cfg.schedule == "constant":
    after = optax.constant_schedule(lr)
  else:
    after = optax.cosine_decay_schedule(lr, max(steps - warmup, 1), alpha=float(train_cfg.min_lr_ratio))
  return optax.join_schedules([warm, after], [warmup])


def param_labels(params, temperatures_only: bool) -> dict:
  """'temp_scalar' / 'temp_matrix' (SSA temperatures: single learned scalars / matrices and their biases),
  'decay' (matrices, embeddings), 'no_decay' (norms, biases), 'frozen' (SSA's fixed buffers; with
  temperatures_only everything that is not a temperature)."""

  def label(path: tuple[str, ...], leaf) -> str:
    group = temperature_group("/".join(path))
    if group == "buffer":
      return "frozen"  # the feature variant's fixed corpus statistic
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


def temperature_multipliers(train_cfg) -> tuple[float, float]:
  """(scalar, matrix) learning-rate multipliers of the SSA temperatures; the replaced single field is refused."""
  for old, new in _REPLACED.items():
    if old in train_cfg:
      raise ConfigError(f"config.train.{old}: replaced by {new[0]} (the single learned scalars: alpha, the "
                        f"constant's log_tau, SSMax's s, the frequency beta) and {new[1]} (the token MLP's w1 / w2 "
                        "and biases, weight sharing's w); see configs/base.py")
  out = []
  for field in _REPLACED["temperature_lr_multiplier"]:
    if field not in train_cfg:
      raise ConfigError(f"config.train.{field}: required (configs/base.py sets it)")
    value = train_cfg[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
      raise ConfigError(f"config.train.{field}: expected a number >= 0, got {value!r}")
    out.append(float(value))
  return out[0], out[1]


def make_optimizer(train_cfg, params) -> optax.GradientTransformation:
  """The full gradient transformation; frozen parameters get no update and hold no optimizer state."""
  schedule = learning_rate_schedule(train_cfg)
  scalar_mult, matrix_mult = temperature_multipliers(train_cfg)

  def adamw(lr, weight_decay):
    return optax.adamw(lr, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps, weight_decay=weight_decay)

  labels = param_labels(params, bool(train_cfg.temperatures_only))
  if not any(l != "frozen" for l in jax.tree_util.tree_leaves(labels)):
    raise ConfigError("config.train.temperatures_only: the model has no SSA temperature parameters to train")
  return optax.chain(
      # Zero frozen gradients first so that clipping measures only what is trained.
      optax.multi_transform({"train": optax.identity(), "frozen": optax.set_to_zero()},
                            jax.tree_util.tree_map(lambda l: "frozen" if l == "frozen" else "train", labels)),
      optax.clip_by_global_norm(float(train_cfg.grad_clip)) if train_cfg.grad_clip > 0 else optax.identity(),
      optax.multi_transform(
          {
              "decay": adamw(schedule, float(train_cfg.weight_decay)),
              "no_decay": adamw(schedule, 0.0),
              "temp_scalar": adamw(lambda step: schedule(step) * scalar_mult, 0.0),
              "temp_matrix": adamw(lambda step: schedule(step) * matrix_mult, 0.0),
              "frozen": optax.set_to_zero(),
          },
          labels,
      ),
  )
