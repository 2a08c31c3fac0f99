"""Passkey scoring with a model that finds the key: hits, the by-length / by-depth breakdowns and stderr by hand.

The model is a stand-in for the decoder with its interface (`.config`, `.apply(variables, tokens, cache=)`), run
by the real generate (KV cache, jit, batches grouped by prompt length) and the real passkey evaluator.
It reads the key back when the key sentence lies within its last WINDOW prompt tokens (a sliding-window memory)
and otherwise answers the key with its last digit changed, so hits and misses mix across lengths and depths in a
way the test predicts from the prompt text alone.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import pytest

from ssa_jax.evaluate import run_eval
from ssa_jax.evaluate.config import passkey_config
from ssa_jax.evaluate.passkey import evaluate_passkey, make_trials
from tests_shared import ShiftedByteTokenizer
from tiny_models import tiny_config

WINDOW = 300  # tokens from the key sentence's "pass key is " to the end of the prompt that the model still sees
MARKER = "pass key is "  # only the key sentence has it ("... The pass key is" ends the question without a space)
ANSWER = 8  # tokens answered: " ", five digits, ".", " "


def _answer_B8(prompt_BT: jax.Array) -> jax.Array:
  """The ANSWER tokens for each prompt: ' key. ' when the marker is within WINDOW of the end, else a wrong key."""
  marker = jnp.asarray(ShiftedByteTokenizer().encode(MARKER))
  B, T = prompt_BT.shape
  L = marker.shape[0]
  match_BP = jnp.stack([prompt_BT[:, k:T - L + 1 + k] == marker[k] for k in range(L)]).all(axis=0)
  at_B = jnp.argmax(match_BP, axis=1)  # the first occurrence
  digits_B5 = jax.vmap(lambda row, a: jax.lax.dynamic_slice(row, (a + L,), (5,)))(prompt_BT, at_B)
  zero = ord("0") + 2
  wrong_last_B = (digits_B5[:, 4] - zero + 1) % 10 + zero
  seen_B = (T - at_B) <= WINDOW
  digits_B5 = digits_B5.at[:, 4].set(jnp.where(seen_B, digits_B5[:, 4], wrong_last_B))
  space, dot = ord(" ") + 2, ord(".") + 2
  return jnp.concatenate([jnp.full((B, 1), space), digits_B5, jnp.full((B, 1), dot), jnp.full((B, 1), space)], 1)


class KeyReader:
  """The decoder's interface; the answer is kept in the first cache array (its first ANSWER slots, the step count
  in the next one), since the generation loop carries only the cache from step to step."""

  def __init__(self, config):
    self.config = config

  def apply(self, variables, tokens_BT, cache):
    leaves, treedef = jax.tree_util.tree_flatten(cache)
    i = next(j for j, leaf in enumerate(leaves) if leaf.ndim >= 2 and leaf.shape[1] > ANSWER)
    store = leaves[i].reshape(leaves[i].shape[0], leaves[i].shape[1], -1)
    B, T = tokens_BT.shape
    if T > 1:  # the prompt: work out the answer, emit its first token
      answer_B8 = _answer_B8(tokens_BT)
      store = store.at[:, :ANSWER, 0].set(answer_B8.astype(store.dtype)).at[:, ANSWER, 0].set(1)
      next_B = answer_B8[:, 0]
    else:  # one generated token in: emit the next answer token
      step = store[0, ANSWER, 0].astype(jnp.int32)
      next_B = jax.lax.dynamic_index_in_dim(store[:, :ANSWER, 0], step, axis=1, keepdims=False).astype(jnp.int32)
      store = store.at[:, ANSWER, 0].add(1)
    leaves[i] = store.reshape(leaves[i].shape)
    logits_BTV = jnp.broadcast_to(10.0 * jax.nn.one_hot(next_B, self.config.vocab_size)[:, None], (B, T, self.config.vocab_size))
    return logits_BTV, jax.tree_util.tree_unflatten(treedef, leaves)


@pytest.fixture(scope="module")
def reader():
  # RoPE positions (no learned table): no length is skipped.
  return KeyReader(dataclasses.replace(tiny_config("llama"), vocab_size=300, num_layers=1).validate())


def _cfg():
  cfg = passkey_config()
  # 243 tokens without filler and 90 per filler: 3, 5 and 8 fillers; the key is seen when at most 2 follow it.
  cfg.lengths, cfg.trials, cfg.max_new_tokens, cfg.seed = (520, 700, 1000), 8, ANSWER, 3
  return cfg


def _by_hand(cfg) -> list[dict]:
  """Each trial's length, depth bucket and hit, from the prompt text: where the key sentence sits."""
  out = []
  for t in make_trials(cfg, ShiftedByteTokenizer()):
    at = t.prompt.index(MARKER)
    before, total = t.prompt[:at].count(cfg.filler), t.prompt.count(cfg.filler)
    depth = before / total if total else 0.0
    out.append(dict(length=t.length, bucket=min(math.floor(depth * cfg.depth_buckets), cfg.depth_buckets - 1),
                    hit=len(t.prompt) - at <= WINDOW, key=t.key))
  return out


def _mean(hits: list[bool]):
  return sum(hits) / len(hits) if hits else None


def test_hits_and_breakdowns_equal_hand_counts(reader):
  cfg = _cfg()
  trials = _by_hand(cfg)
  hits = [t["hit"] for t in trials]
  assert 0 < sum(hits) < len(hits)  # a mix of hits and misses
  out = evaluate_passkey(reader, {}, ShiftedByteTokenizer(), cfg, batch_size=3)
  assert out["n"] == len(trials) == 24
  assert [r["correct"] for r in out["trials"]] == hits
  for r, t in zip(out["trials"], trials):  # the model answered as designed: the key, or the key with its last digit +1
    wrong = t["key"][:4] + str((int(t["key"][4]) + 1) % 10)
    assert r["output"] == f" {t['key'] if t['hit'] else wrong}. "
  n, h = len(hits), sum(hits)
  assert out["acc"] == pytest.approx(h / n)
  assert out["acc_stderr"] == pytest.approx(math.sqrt((h / n) * (1 - h / n) / (n - 1)))
  labels = [f"{b / 5:.2f}-{(b + 1) / 5:.2f}" for b in range(5)]
  assert out["by_length"] == pytest.approx({str(L): _mean([t["hit"] for t in trials if t["length"] == L])
                                            for L in cfg.lengths})
  assert out["by_depth"] == {labels[b]: _mean([t["hit"] for t in trials if t["bucket"] == b]) for b in range(5)}
  assert out["by_length_depth"] == {
      str(L): {labels[b]: _mean([t["hit"] for t in trials if t["length"] == L and t["bucket"] == b]) for b in range(5)}
      for L in cfg.lengths}
  # The design mixes outcomes inside one length and inside one depth bucket, not only across them.
  assert any(0 < v < 1 for v in out["by_length"].values())
  assert any(v is not None and 0 < v < 1 for v in out["by_depth"].values())


def test_run_eval_reports_the_same_counts(reader):
  cfg = _cfg()
  hits = [t["hit"] for t in _by_hand(cfg)]
  n, h = len(hits), sum(hits)
  out = run_eval(reader, {}, ShiftedByteTokenizer(), "passkey", passkey=cfg, show_progress=False)
  assert out["results"]["passkey"]["acc,none"] == pytest.approx(h / n)
  assert out["results"]["passkey"]["acc_stderr,none"] == pytest.approx(math.sqrt(h * (n - h) / (n * n * (n - 1))))
  assert out["n-samples"]["passkey"] == {"original": n, "effective": n}
