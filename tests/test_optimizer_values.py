"""The optimizer by value: which parameters decay, the temperature multipliers, clipping and the whole schedule.

Every expectation is written here from the rule in docs/training.md and configs/base.py, not read from
ssa_jax.train.optim: AdamW's first step under a gradient g is -lr * (g / (|g| + eps) + wd * p) exactly (bias
correction makes m_hat = g and v_hat = g^2), and under a steady gradient of ones every later step is -lr_t too,
so one step shows the decay mask and the multipliers, and a run of steps shows the schedule.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import base
from ssa_jax.model.params import init_variables
from ssa_jax.train.optim import learning_rate_schedule, make_optimizer
from tiny_models import tiny_config

SCALARS = {"alpha", "beta", "log_tau", "ssmax_s"}  # SSA's single learned scalars (one per head)
# A model with every kind of parameter: biases and norms (GPT-2), the token MLP and the frequency scalar need
# two models (one token kind each); weight sharing's w and SSMax's s a third.
MODELS = {
    "gpt2_mlp": dict(family="gpt2", enabled=True, token_kind="mlp", key=True),
    "llama_frequency": dict(family="llama", enabled=True, token_kind="frequency"),
    "neox_shared_ssmax": dict(family="neox", enabled=True, token_kind="shared", position_kind="ssmax"),
    "gpt2_scanned": dict(family="gpt2", enabled=True, token_kind="mlp", scan_layers=True),
}


def _cfg(name: str):
  fields = dict(MODELS[name])
  family, scan = fields.pop("family"), fields.pop("scan_layers", False)
  cfg = tiny_config(family, **fields)
  return dataclasses.replace(cfg, scan_layers=True).validate() if scan else cfg


def _params(name: str) -> dict:
  cfg = _cfg(name)
  params = jax.device_get(init_variables(cfg, jax.random.PRNGKey(0))["params"])
  # Every entry random and non-zero: biases and zero-initialised matrices would hide a wrong decay (0 x wd = 0).
  rng = np.random.default_rng(1)
  return jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(1.0, 0.5, p.shape), p.dtype), params)


def _train(**over):
  train = base.get_config("tiny", "ssa", mode="pretrain").train
  train.update(dict(lr=0.01, warmup_steps=0, steps=100, schedule="constant", min_lr_ratio=1.0, eps=1e-8,
                    weight_decay=0.0, grad_clip=0.0, temperature_scalar_lr_multiplier=1.0,
                    temperature_matrix_lr_multiplier=1.0, temperatures_only=False))
  train.update(over)
  return train


def _group(path: tuple[str, ...]) -> str:
  """The group of one parameter, by the documented rule: what SSA adds, then matrices vs vectors by name."""
  if any(p.startswith("ssa_") for p in path):  # under an ssa_q / ssa_k / ssa_v temperature module
    return "temp_scalar" if path[-1] in SCALARS else "temp_matrix"
  assert path[-1] in ("kernel", "embedding", "bias", "scale"), f"{path}: a parameter the rule does not know"
  return "decay" if path[-1] in ("kernel", "embedding") else "no_decay"  # biases and norm scales do not decay


def test_the_models_hold_every_group():
  groups = {_group(p) for name in MODELS for p in traverse_util.flatten_dict(_params(name))}
  assert groups == {"decay", "no_decay", "temp_scalar", "temp_matrix"}  # phi lives in "buffers", not here


def _first_update(train, params, grads, cfg) -> dict:
  tx = make_optimizer(train, params, cfg)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return traverse_util.flatten_dict(jax.device_get(updates))


@pytest.mark.parametrize("name", list(MODELS))
def test_weight_decay_reaches_kernels_and_embeddings_only(name):
  params = _params(name)
  flat = traverse_util.flatten_dict(params)
  groups = {p: _group(p) for p in flat}
  assert {"decay", "no_decay"} <= set(groups.values()) and "temp_scalar" in groups.values(), groups
  # Zero gradients: Adam's part is 0 / (0 + eps) = 0, so the whole update is the decay, -lr * wd * p.
  train = _train(weight_decay=0.25)
  updates = _first_update(train, params, jax.tree_util.tree_map(jnp.zeros_like, params), _cfg(name))
  for path, p in flat.items():
    expected = -0.01 * 0.25 * np.asarray(p) if groups[path] == "decay" else np.zeros_like(p)
    np.testing.assert_allclose(updates[path], expected, rtol=1e-5, atol=1e-12, err_msg="/".join(path))


@pytest.mark.parametrize("name", ["gpt2_mlp", "llama_frequency", "neox_shared_ssmax"])
def test_each_group_steps_by_its_own_learning_rate(name):
  # A gradient of ones: every entry moves by -lr x its group's multiplier.
  params = _params(name)
  scalar, matrix = 7.0, 0.3  # neither 1 nor 10x apart from each other's neighbours: a swap or x10 is caught
  train = _train(temperature_scalar_lr_multiplier=scalar, temperature_matrix_lr_multiplier=matrix)
  updates = _first_update(train, params, jax.tree_util.tree_map(jnp.ones_like, params), _cfg(name))
  rate = {"decay": 1.0, "no_decay": 1.0, "temp_scalar": scalar, "temp_matrix": matrix}
  for path, u in updates.items():
    group = _group(path)
    np.testing.assert_allclose(u, np.full_like(u, -0.01 * rate[group]), rtol=1e-6, err_msg="/".join(path))


def test_temperatures_only_moves_the_temperatures_alone():
  params = _params("llama_frequency")
  train = _train(temperatures_only=True, temperature_scalar_lr_multiplier=3.0)
  updates = _first_update(train, params, jax.tree_util.tree_map(jnp.ones_like, params), _cfg("llama_frequency"))
  for path, u in updates.items():
    expected = -0.03 if _group(path) == "temp_scalar" else 0.0
    np.testing.assert_allclose(u, np.full_like(u, expected), rtol=1e-6, err_msg="/".join(path))


def _clipped_first_step(grads: dict, trained: set, clip: float, lr: float, eps: float) -> dict:
  """AdamW's first step after clip-by-global-norm over the trained leaves (numpy, written out)."""
  norm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for p, g in grads.items() if p in trained))
  scale = min(1.0, clip / norm)
  out = {}
  for p, g in grads.items():
    g = np.asarray(g, np.float64) * scale
    out[p] = -lr * g / (np.abs(g) + eps) if p in trained else np.zeros_like(g)
  return out


@pytest.mark.parametrize("temperatures_only", [False, True])
@pytest.mark.parametrize("clip", [0.5, 1e6])
def test_gradient_clipping_by_value(temperatures_only, clip):
  # eps = 1 makes Adam's first step depend on the gradient's size, so the clipped scale shows in the update.
  params = _params("llama_frequency")
  flat = traverse_util.flatten_dict(params)
  rng = np.random.default_rng(0)
  grads = {p: rng.normal(scale=0.2, size=v.shape).astype(np.float32) for p, v in flat.items()}
  trained = {p for p in flat if not temperatures_only or _group(p).startswith("temp")}
  train = _train(grad_clip=clip, eps=1.0, temperatures_only=temperatures_only)
  got = _first_update(train, params, traverse_util.unflatten_dict({p: jnp.asarray(g) for p, g in grads.items()}),
                      _cfg("llama_frequency"))
  expected = _clipped_first_step(grads, trained, clip, lr=0.01, eps=1.0)
  unclipped = _clipped_first_step(grads, trained, 1e30, lr=0.01, eps=1.0)
  if clip < 1.0:  # the case must be one where clipping changes the step
    assert any(np.abs(expected[p] - unclipped[p]).max() > 1e-4 for p in trained)
  for p in flat:
    np.testing.assert_allclose(got[p], expected[p], rtol=1e-4, atol=1e-9, err_msg="/".join(p))


def _schedule_by_hand(step: int, lr: float, warmup: int, steps: int, min_ratio: float, kind: str) -> float:
  """Linear warmup from 0 over `warmup` steps, then cosine from lr to lr * min_ratio at `steps` (or constant)."""
  if step < warmup:
    return lr * step / warmup
  if kind == "constant":
    return lr
  progress = min(step - warmup, steps - warmup) / (steps - warmup)
  return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@pytest.mark.parametrize("kind,warmup,min_ratio", [("cosine", 5, 0.2), ("cosine", 0, 0.1), ("constant", 3, 1.0),
                                                   ("cosine", 4, 0.0)])
def test_the_whole_schedule_by_value(kind, warmup, min_ratio):
  steps, lr = 20, 0.01
  train = _train(lr=lr, warmup_steps=warmup, steps=steps, schedule=kind, min_lr_ratio=min_ratio)
  schedule = learning_rate_schedule(train)
  hand = [_schedule_by_hand(s, lr, warmup, steps, min_ratio, kind) for s in range(steps + 6)]
  np.testing.assert_allclose([float(schedule(s)) for s in range(steps + 6)], hand, rtol=1e-5, atol=1e-9)
  if kind == "cosine":  # the end of the cosine and past it: lr x min_lr_ratio
    assert float(schedule(steps)) == pytest.approx(lr * min_ratio, rel=1e-5, abs=1e-12)
    assert float(schedule(steps + 5)) == pytest.approx(lr * min_ratio, rel=1e-5, abs=1e-12)


def test_the_optimizer_applies_the_schedule_at_every_step():
  # Under a steady gradient of ones every AdamW step is -lr_t (m_hat = v_hat = 1): the applied rates are the schedule.
  params = {"dense": {"kernel": jnp.zeros((2, 3)), "bias": jnp.zeros((3,))}}
  warmup, steps, lr, min_ratio = 5, 20, 0.01, 0.2
  train = _train(lr=lr, warmup_steps=warmup, steps=steps, schedule="cosine", min_lr_ratio=min_ratio)
  tx = make_optimizer(train, params, tiny_config("neox"))  # a hand-made tree: no parameter of it is SSA's
  state, ones = tx.init(params), jax.tree_util.tree_map(jnp.ones_like, params)
  update = jax.jit(tx.update)
  applied = []
  for _ in range(steps + 4):
    updates, state = update(ones, state, params)
    applied.append(-float(updates["dense"]["kernel"][0, 0]))
    assert float(updates["dense"]["bias"][0]) == pytest.approx(-applied[-1], rel=1e-6)
  hand = [_schedule_by_hand(s, lr, warmup, steps, min_ratio, "cosine") for s in range(steps + 4)]
  np.testing.assert_allclose(applied, hand, rtol=1e-5, atol=1e-10)
