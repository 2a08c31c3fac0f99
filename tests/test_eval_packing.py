"""The packed, prefix-sharing scorer against the plain computation: one causal forward per request."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssa_jax.evaluate.requests import TokenRequest
from ssa_jax.evaluate.scoring import Scorer, make_units, pack_rows
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.params import init_variables
from tiny_models import tiny_config, with_random_temperatures

MAX_LENGTH = 24


def _model(family: str) -> tuple[Decoder, dict]:
  cfg = tiny_config(family, max_seq_len=MAX_LENGTH, enabled=True, position_tau_at_end=1.5)
  return Decoder(cfg), with_random_temperatures(init_variables(cfg, jax.random.PRNGKey(0)), seed=1)


def _reference(model, params, reqs: list[TokenRequest]) -> list[tuple[float, bool]]:
  """lm-eval's rule, written out: input (ctx + cont)[-(L+1):][:-1], sum of log-softmax over the last len(cont)
  positions. All requests in one causal forward, right-padded (padding after a token cannot change it)."""
  wholes = [(list(r.context) + list(r.continuation))[-(MAX_LENGTH + 1):] for r in reqs]
  tokens = np.zeros((len(reqs), MAX_LENGTH), np.int32)
  for i, w in enumerate(wholes):
    tokens[i, :len(w) - 1] = w[:-1]
  with jax.default_matmul_precision("highest"):
    logp = np.asarray(jax.nn.log_softmax(model.apply(params, jnp.asarray(tokens)), axis=-1), np.float64)
  out = []
  for i, (r, w) in enumerate(zip(reqs, wholes)):
    n, end = len(r.continuation), len(w) - 1
    rows = logp[i, end - n:end]
    targets = w[-n:]
    out.append((float(sum(rows[j, t] for j, t in enumerate(targets))),
                bool(all(rows[j].argmax() == t for j, t in enumerate(targets)))))
  return out


def _requests(rng: np.random.Generator) -> list[TokenRequest]:
  reqs = []
  tok = lambda n: tuple(int(x) for x in rng.integers(0, 50, n))
  for doc in range(12):  # multiple choice: shared contexts, 2-5 choices of 1-6 tokens
    ctx = tok(int(rng.integers(1, 14)))
    for _ in range(int(rng.integers(2, 6))):
      reqs.append(TokenRequest(ctx, tok(int(rng.integers(1, 7))), doc))
  for doc in range(4):  # truncated on the left: contexts longer than MAX_LENGTH
    reqs.append(TokenRequest(tok(int(rng.integers(20, 40))), tok(int(rng.integers(1, 9))), 100 + doc))
  for doc in range(3):  # rolling-window-like: a 1-token context and long continuations
    reqs.append(TokenRequest(tok(1), tok(int(rng.integers(10, MAX_LENGTH + 1))), 200 + doc))
  # One context with many one-token choices: more scored positions than context tokens.
  ctx = tok(1)
  reqs += [TokenRequest(ctx, tok(1), 300) for _ in range(6)]
  order = rng.permutation(len(reqs))
  return [reqs[i] for i in order]


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_packed_scores_equal_one_forward_per_request(family):
  model, params = _model(family)
  reqs = _requests(np.random.default_rng(0))
  scorer = Scorer(model, params, MAX_LENGTH, batch_size=2, matmul_precision="highest", show_progress=False,
                  pack_length=16)
  jitted, kernels = scorer._score, []
  scorer._score = lambda *a, **k: kernels.append(k["causal"]) or jitted(*a, **k)
  ll, greedy = scorer.score(reqs)
  assert False in kernels  # tree-mask rows ran
  ref = _reference(model, params, reqs)
  np.testing.assert_allclose(ll, [r[0] for r in ref], rtol=2e-5, atol=2e-5)
  assert greedy.tolist() == [r[1] for r in ref]
  # Requests longer than pack_length, one a row: the plain causal kernel, same numbers.
  long_ids = [i for i, r in enumerate(reqs) if 100 <= r.owner < 300 and len(r.context) + len(r.continuation) > 17]
  kernels.clear()
  ll_long, _ = scorer.score([reqs[i] for i in long_ids])
  assert kernels and all(kernels)
  np.testing.assert_allclose(ll_long, [ref[i][0] for i in long_ids], rtol=2e-5, atol=2e-5)
  # Sharing and packing did happen: fewer computed tokens than lm-eval's one row per request.
  assert scorer.stats.computed_tokens < 0.8 * scorer.stats.tokens
  assert scorer.stats.padded_tokens < 1.5 * scorer.stats.computed_tokens


def test_units_share_contexts_and_rows_never_overflow():
  reqs = _requests(np.random.default_rng(1))
  units = make_units(reqs, MAX_LENGTH)
  assert sorted(k for u in units for k in u.requests) == list(range(len(reqs)))
  assert all(u.length <= MAX_LENGTH for u in units)
  assert len(units) < len(reqs)
  for u in units:
    for k, branch in zip(u.requests, u.branches):
      assert len(branch) == len(reqs[k].continuation) - 1
  rows = pack_rows([u for u in units if u.length <= 16], 16)
  assert all(sum(u.length for u in row) <= 16 for row in rows)
