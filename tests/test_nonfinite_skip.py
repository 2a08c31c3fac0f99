"""A skipped non-finite step: params and Adam moments stay, the learning-rate schedule stays on the global
step, and the loop's on-device counters see the skips."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from ssa_jax.model.decoder import Decoder
from ssa_jax.model.params import init_variables
from ssa_jax.train.optim import learning_rate_schedule, make_optimizer
from ssa_jax.train.state import TrainState
from ssa_jax.train.step import count_nonfinite, make_train_step, next_token_loss, nonfinite_counts
from tiny_models import tiny_config


def _train_cfg(**over):
  cfg = dict(lr=1e-2, warmup_steps=4, steps=100, schedule="cosine", min_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
             weight_decay=0.0, grad_clip=0.0, temperature_scalar_lr_multiplier=1.0,
      temperature_matrix_lr_multiplier=1.0, temperatures_only=False)
  cfg.update(over)
  return ml_collections.ConfigDict(cfg)


def test_after_a_skipped_step_the_update_uses_the_schedule_at_the_global_step():
  model_cfg = tiny_config("neox", enabled=True, token_kind="mlp")
  model = Decoder(model_cfg)
  params = init_variables(model_cfg, jax.random.PRNGKey(0))["params"]
  train_cfg = _train_cfg()
  tx, schedule = make_optimizer(train_cfg, params, model_cfg), learning_rate_schedule(train_cfg)
  step = jax.jit(make_train_step(model, tx, schedule, 1))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, model_cfg.vocab_size, (4, 17)), jnp.int32)

  # Step 0 is non-finite (a NaN weight): nothing is applied.
  flat = traverse_util.flatten_dict(params)
  first = next(iter(flat))
  poisoned = traverse_util.unflatten_dict({**flat, first: flat[first].at[(0,) * flat[first].ndim].set(jnp.nan)})
  state = TrainState(step=jnp.zeros((), jnp.int32), params=poisoned, buffers={}, opt_state=tx.init(params))
  state, metrics = step(state, {"tokens": tokens})
  assert bool(metrics["nonfinite"]) and int(state.step) == 1

  # Step 1 from the clean weights: Adam's first update is lr * g / (|g| + eps) (no decay, no clipping), with
  # lr = schedule(1) = lr / 4, the global step's rate (an optimizer that lagged would use schedule(0) = 0).
  state = state.replace(params=params)
  state, metrics = step(state, {"tokens": tokens})
  assert not bool(metrics["nonfinite"]) and int(state.step) == 2
  lr = float(schedule(1))
  assert lr == np.float32(train_cfg.lr / 4) and float(metrics["lr"]) == lr
  grads = jax.grad(lambda p: next_token_loss(model, {"params": p}, tokens)[0])(params)
  g = traverse_util.flatten_dict(jax.device_get(grads))
  before, after = flat, traverse_util.flatten_dict(jax.device_get(state.params))
  compared = 0
  for k in g:
    delta = after[k] - before[k]
    assert np.all(np.abs(delta) <= lr * (1 + 1e-5)), "/".join(k)
    # Where |g| >> eps the update is -lr * sign(g) whatever rounding the two gradients differ by.
    big = np.abs(g[k]) > 1e-5
    np.testing.assert_allclose(delta[big], -lr * np.sign(g[k][big]), rtol=1e-3, err_msg="/".join(k))
    compared += int(big.sum())
  assert compared > 1000, compared


def test_nonfinite_counters():
  counts = nonfinite_counts()
  for bad in (True, False, True, True, True, False, True):
    counts = count_nonfinite(counts, jnp.asarray(bad))
  assert {k: int(v) for k, v in counts.items()} == {"total": 5, "in_a_row": 1, "longest": 3}
