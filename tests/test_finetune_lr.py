"""A fine-tune nudges SSA's new parameters from identity; it does not re-initialise them.

From a briefly pretrained tiny vanilla model, SSA is added near identity and fine-tuned over the fine-tune schedule
of configs/pythia160m_ssa_ft.py (107 steps, lr 1e-6, AdamW 0.9 / 0.95, no decay, its temperature multipliers).
Bounds (stated here, measured on the demo model in the README's "Fine-tune learning rates"):
- the token MLP's w1 (std 0.02 at init) changes by less than W1_BOUND of its norm;
- every zero-initialised matrix (w2, weight sharing's w, the biases) stays below ZERO_INIT_BOUND in every entry,
  and tau moves by less than TAU_BOUND at any token;
- the held-out loss at step 0 is the pretrained model's within 0.5%.
The single multiplier of before (1e4 on every temperature) breaks the first bound (w1 moves 5.5-7.1x its norm here).
The scalars' side (2x under a steady gradient) is tests/test_temperature_kinds.py's.
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
from ssa_jax.model.params import init_params
from tiny_models import tiny_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
VOCAB, SEQ, BATCH = 64, 32, 16
# Adam moves an entry by about lr x multiplier a step at most: 107 x 1e-6 x 30 = 3.2e-3 over the schedule, which is
# 0.16 of w1's init std 0.02 (its ceiling under a steady gradient). Measured here: w1 0.005-0.024, zero-initialised
# entries 2.1e-3, tau 0.003; on the demo model (README) w1 0.12, entries 3.3e-3, tau_q 0.96-1.02.
W1_BOUND = 0.25  # ||w1_T - w1_0|| / ||w1_0||
ZERO_INIT_BOUND = 0.01  # max |entry| of a zero-initialised matrix after the schedule
TAU_BOUND = 0.1  # max |tau_T - tau_0| over held-out tokens, heads, layers


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
  params = finetune(Decoder(cfg), init_params(cfg, jax.random.PRNGKey(0)), train, _markov_batches(120, seed=1))
  heldout = _markov_batches(4, seed=2)
  loss = heldout_loss(Decoder(cfg), params, heldout)
  assert loss < np.log(VOCAB) - 1.0, loss  # it learned the chain (uniform: log 64 = 4.16; the chain: log 4 = 1.39)
  return cfg, jax.device_get(params), heldout


def _finetuned(pretrained, variant: str, train):
  cfg, params, heldout = pretrained
  ssa = SSAConfig(**{**models.SSA_DEFAULTS, **models.SSA_VARIANTS[variant], "position_tau_at_end": 1.001,
                     "position_reference_len": SEQ})
  model = Decoder(dataclasses.replace(cfg, ssa=ssa).validate())
  start = with_fresh_ssa(params, model.config, seed=0)
  end = finetune(model, start, train, _markov_batches(train.steps, seed=3))
  return model, start, end


def _taus(model, params, tokens_BT):
  _, state = model.apply({"params": params}, tokens_BT, mutable=["intermediates"])
  return np.stack([np.asarray(v[0]) for v in jax.tree_util.tree_leaves(
      state["intermediates"], is_leaf=lambda x: isinstance(x, tuple))])


@pytest.mark.parametrize("variant", ["ssa", "ssa_ws"])
def test_finetune_schedule_nudges_the_new_parameters(pretrained, variant):
  cfg, params, heldout = pretrained
  model, start, end = _finetuned(pretrained, variant, _ft_train_config())
  vanilla = heldout_loss(Decoder(cfg), params, heldout)
  assert heldout_loss(model, start, heldout) == pytest.approx(vanilla, rel=5e-3)
  d = drift(start, end)
  w1 = {k: v for k, v in d["relative"].items() if "/w1/kernel" in k}
  assert (len(w1) == 2 * cfg.num_layers) == (variant == "ssa")  # q and v per layer
  assert max(w1.values(), default=0.0) < W1_BOUND, w1
  assert d["absolute"] and max(d["absolute"].values()) < ZERO_INIT_BOUND, d["absolute"]
  assert max(d["absolute"].values()) > 1e-4, "the zero-initialised matrices did not move at all"
  tau_moved = np.abs(_taus(model, end, heldout[0, :, :-1]) - _taus(model, start, heldout[0, :, :-1])).max()
  assert tau_moved < TAU_BOUND


def test_the_single_multiplier_of_before_re_initialises_the_token_mlp(pretrained):
  # 1e4 on every temperature (the earlier temperature_lr_multiplier): w1 moves past its own norm.
  model, start, end = _finetuned(pretrained, "ssa", _ft_train_config(temperature_matrix_lr_multiplier=1e4))
  w1 = [v for k, v in drift(start, end)["relative"].items() if "/w1/kernel" in k]
  assert min(w1) > 1.0, w1
