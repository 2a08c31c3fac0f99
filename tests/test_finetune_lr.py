"""A fine-tune nudges SSA's new parameters from identity; it does not re-initialise them, nor leave them put.

From a briefly pretrained tiny vanilla model, SSA is added near identity and fine-tuned over the fine-tune schedule
of configs/pythia160m_ssa_ft.py (107 steps, lr 1e-6, AdamW 0.9 / 0.95, no decay, its temperature multipliers).
Adam moves an entry by about lr x multiplier a step at most, so each bound is two-sided around that ceiling: a
multiplier wired 10x too large or 10x too small breaks each of them (measured here, README "Fine-tune learning
rates" on the demo model):
- the token MLP's w1 (std 0.02 at init) changes by W1_BOUNDS of its norm (largest over layers and q / v);
- the largest entry of the zero-initialised matrices (w2, weight sharing's w, the biases) is in ZERO_INIT_BOUNDS;
- the largest move of tau over held-out tokens, heads and layers is in TAU_BOUNDS;
- the position scalars (sigmoid(alpha), lr x 1e4) change by a factor whose largest |log| is in SCALAR_LOG_BOUNDS;
- the held-out loss at step 0 is the pretrained model's within 0.5%.
The single multiplier of before (1e4 on every temperature) breaks the first bound (w1 moves 5.5-7.1x its norm here).
Exact multipliers by value (one AdamW step per group) are tests/test_optimizer_values.py's.
"""

import dataclasses
import importlib.util
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from configs import base, models
from ssa_jax.experiments.finetune_drift import drift, finetune, heldout_loss, with_fresh_ssa
from ssa_jax.model.config import SSAConfig
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.params import init_variables
from tiny_models import tiny_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
VOCAB, SEQ, BATCH = 64, 32, 16
# The ceiling under a steady gradient: 107 steps x 1e-6 x 30 = 3.2e-3 per entry, 0.16 of w1's init std 0.02.
# Measured here (x0.1 / x1 / x10 both multipliers): w1 0.0012 / 0.024 / 0.30; zero-initialised entries 2.1e-4 /
# 2.3e-3 / 2.6e-2 (weight sharing 1.9e-3 at x1); tau 3e-4 / 2.9e-3 / 2.9e-2; |log sigmoid(alpha) factor| 0.05 / 0.48 /
# 3.1. Each range holds x1 with at least 2x to spare on either side and excludes x0.1 and x10.
W1_BOUNDS = (0.008, 0.08)  # max ||w1_T - w1_0|| / ||w1_0||
ZERO_INIT_BOUNDS = (6.4e-4, 6.4e-3)  # max |entry| of a zero-initialised matrix after the schedule: 0.2-2x the ceiling
TAU_BOUNDS = (1e-3, 1e-2)  # max |tau_T - tau_0| over held-out tokens, heads, layers
SCALAR_LOG_BOUNDS = (0.15, 1.5)  # max |log(after / before)| of the positive position scalars


def _markov_batches(count: int, seed: int) -> np.ndarray:
  """(count, BATCH, SEQ + 1) windows of one fixed sparse bigram chain (4 likely successors per token)."""
  table = np.random.default_rng(123).integers(0, VOCAB, (VOCAB, 4))
  rng = np.random.default_rng(seed)
  out = np.empty((count * BATCH, SEQ + 1), np.int32)
  out[:, 0] = rng.integers(0, VOCAB, count * BATCH)
  for t in range(1, SEQ + 1):
    out[:, t] = table[out[:, t - 1], rng.integers(0, 4, count * BATCH)]
  return out.reshape(count, BATCH, SEQ + 1)


def _ft_train_config(**overrides) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location("ft", CONFIG_DIR / "pythia160m_ssa_ft.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  train = module.get_config().train
  train.update(overrides)
  return train


@pytest.fixture(scope="module")
def pretrained():
  """A tiny vanilla model trained for 120 steps on the chain (demo optimizer settings), and held-out batches."""
  cfg = tiny_config("neox", max_seq_len=64)
  train = base.get_config("tiny", "vanilla", mode="demo").train
  train.update(dict(steps=120, warmup_steps=10))
  variables = finetune(Decoder(cfg), init_variables(cfg, jax.random.PRNGKey(0)), train, _markov_batches(120, seed=1))
  heldout = _markov_batches(4, seed=2)
  loss = heldout_loss(Decoder(cfg), variables, heldout)
  assert loss < np.log(VOCAB) - 1.0, loss  # it learned the chain (uniform: log 64 = 4.16; the chain: log 4 = 1.39)
  return cfg, jax.device_get(variables), heldout


def _finetuned(pretrained, variant: str, train):
  cfg, variables, heldout = pretrained
  ssa = SSAConfig(**{**models.SSA_DEFAULTS, **models.SSA_VARIANTS[variant], "position_tau_at_end": 1.001,
                     "position_reference_len": SEQ})
  model = Decoder(dataclasses.replace(cfg, ssa=ssa).validate())
  start = with_fresh_ssa(variables, model.config, seed=0)
  end = finetune(model, start, train, _markov_batches(train.steps, seed=3))
  return model, start, end


def _taus(model, variables, tokens_BT):
  _, state = model.apply(variables, tokens_BT, mutable=["intermediates"])
  return np.stack([np.asarray(v[0]) for v in jax.tree_util.tree_leaves(
      state["intermediates"], is_leaf=lambda x: isinstance(x, tuple))])


@pytest.mark.parametrize("variant", ["ssa", "ssa_ws"])
def test_finetune_schedule_nudges_the_new_parameters(pretrained, variant):
  cfg, variables, heldout = pretrained
  model, start, end = _finetuned(pretrained, variant, _ft_train_config())
  vanilla = heldout_loss(Decoder(cfg), variables, heldout)
  assert heldout_loss(model, start, heldout) == pytest.approx(vanilla, rel=5e-3)
  d = drift(start["params"], end["params"], model.config)
  w1 = {k: v for k, v in d["relative"].items() if "/w1/kernel" in k}
  assert (len(w1) == 2 * cfg.num_layers) == (variant == "ssa")  # q and v per layer
  if w1:
    assert W1_BOUNDS[0] < max(w1.values()) < W1_BOUNDS[1], w1
  assert d["absolute"] and ZERO_INIT_BOUNDS[0] < max(d["absolute"].values()) < ZERO_INIT_BOUNDS[1], d["absolute"]
  tau_moved = np.abs(_taus(model, end, heldout[0, :, :-1]) - _taus(model, start, heldout[0, :, :-1])).max()
  assert TAU_BOUNDS[0] < tau_moved < TAU_BOUNDS[1]
  scalar_log = max(abs(np.log(v)) for v in d["scalar"].values())
  assert SCALAR_LOG_BOUNDS[0] < scalar_log < SCALAR_LOG_BOUNDS[1], d["scalar"]


def test_the_single_multiplier_of_before_re_initialises_the_token_mlp(pretrained):
  # 1e4 on every temperature (the earlier temperature_lr_multiplier): w1 moves past its own norm.
  model, start, end = _finetuned(pretrained, "ssa", _ft_train_config(temperature_matrix_lr_multiplier=1e4))
  w1 = [v for k, v in drift(start["params"], end["params"], model.config)["relative"].items() if "/w1/kernel" in k]
  assert min(w1) > 1.0, w1
