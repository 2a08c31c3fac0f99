"""Passkey retrieval (the paper's Table 4): a key hidden at a random depth in filler text, decoded greedily.

Prompt = instruction, filler sentences with the key sentence inserted after a uniformly drawn number of
them, then the question; as many fillers as fit in the target length. Seeded per length: each length draws
from its own stream (seed, length), so adding or removing a length leaves the other lengths' prompts as
they were. A trial is a hit when the first integer in the generated text is the key. Accuracy per length,
per depth bucket (the key's actual place in the filler), and per (length, depth bucket). A length the
model cannot run (prompt + new tokens past a learned position table) is skipped and reported with why.
"""

from __future__ import annotations

import dataclasses
import re

import ml_collections
import numpy as np

from ssa_jax.data.tokenizer import Tokenizer
from ssa_jax.evaluate.generate import generate
from ssa_jax.evaluate.metrics import mean_stderr

_INTEGER = re.compile(r"\d+")


@dataclasses.dataclass(frozen=True)
class Trial:
  length: int  # target prompt length in tokens
  depth: float  # fraction of the filler sentences before the key, as placed (n_before / n_fill)
  key: str
  prompt: str


def _prompt(cfg: ml_collections.ConfigDict, n_fill: int, n_before: int, key: str) -> str:
  fill = [cfg.filler] * n_fill
  parts = [cfg.instruction] + fill[:n_before] + [cfg.key_sentence.format(key=key)] + fill[n_before:] + [cfg.question]
  return " ".join(parts)


def make_trials(cfg: ml_collections.ConfigDict, tokenizer: Tokenizer, add_bos: bool | None = None) -> list[Trial]:
  """`cfg.trials` prompts per length in `cfg.lengths`; each prompt (BOS per `add_bos`) is at most its length."""
  filler_tokens = len(tokenizer.encode(" " + cfg.filler, add_bos=False))
  trials = []
  for length in cfg.lengths:
    rng = np.random.default_rng([int(cfg.seed), int(length)])  # the same prompts whatever the other lengths
    sample_key = "9" * cfg.digits
    fixed = len(tokenizer.encode(_prompt(cfg, 0, 0, sample_key), add_bos=add_bos))
    n_fill = max((int(length) - fixed) // max(filler_tokens, 1), 0)
    # Token counts do not add up exactly across sentence joins: shrink until the prompt fits.
    while n_fill > 0 and len(tokenizer.encode(_prompt(cfg, n_fill, 0, sample_key), add_bos=add_bos)) > length:
      n_fill -= 1
    for _ in range(cfg.trials):
      key = str(int(rng.integers(10 ** (cfg.digits - 1), 10 ** cfg.digits)))
      n_before = min(int(round(float(rng.uniform(0.0, 1.0)) * n_fill)), n_fill)
      # The depth recorded is where the key went, not the draw (they differ by the rounding to a sentence).
      depth = n_before / n_fill if n_fill else 0.0
      trials.append(Trial(int(length), depth, key, _prompt(cfg, n_fill, n_before, key)))
  return trials


def is_hit(output: str, key: str) -> bool:
  """True when the first integer in `output` is `key` ("123." and "123 abc" hit 123; "1234" does not)."""
  match = _INTEGER.search(output)
  return match is not None and match.group() == key


def evaluate_passkey(model, variables, tokenizer: Tokenizer, cfg: ml_collections.ConfigDict,
                     add_bos: bool | None = None, batch_size: int = 16) -> dict:
  """Runs every trial; returns overall accuracy, its stderr, the breakdowns, the skipped lengths and each trial."""
  limit = model.config.max_seq_len  # of a learned position table; RoPE models extrapolate, so every length runs
  skipped = {int(L): (f"passkey length {L}: a prompt of up to {L} tokens + {cfg.max_new_tokens} new tokens does not "
                      f"fit the model's {limit} learned positions")
             for L in cfg.lengths if model.config.learned_positions and int(L) + int(cfg.max_new_tokens) > limit}
  run_cfg = ml_collections.ConfigDict(cfg.to_dict())
  run_cfg.lengths = tuple(L for L in cfg.lengths if int(L) not in skipped)
  trials = make_trials(run_cfg, tokenizer, add_bos)
  prompts = [tokenizer.encode(t.prompt, add_bos=add_bos) for t in trials]
  for L in run_cfg.lengths:
    longest = max(len(p) for t, p in zip(trials, prompts) if t.length == L)
    if longest > L:  # no filler at all and still too long: the length cannot be honoured
      skipped[int(L)] = (f"passkey length {L}: shorter than the passkey prompt without any filler "
                         f"({longest} tokens)")
  kept = [i for i, t in enumerate(trials) if t.length not in skipped]
  trials, prompts = [trials[i] for i in kept], [prompts[i] for i in kept]
  outputs = generate(model, variables, prompts, cfg.max_new_tokens, max_batch=batch_size) if prompts else []
  correct, records = [], []
  for t, p, o in zip(trials, prompts, outputs):
    text = tokenizer.decode(o)
    ok = is_hit(text, t.key)
    correct.append(float(ok))
    records.append({"length": t.length, "prompt_tokens": len(p), "depth": round(t.depth, 4), "key": t.key,
                    "output": text, "correct": ok})
  buckets = int(cfg.depth_buckets)
  bucket_of = lambda d: min(int(d * buckets), buckets - 1)  # noqa: E731
  labels = {b: f"{b / buckets:.2f}-{(b + 1) / buckets:.2f}" for b in range(buckets)}
  lengths = list(dict.fromkeys(t.length for t in trials))

  def accuracy(keep) -> float | None:
    sel = [c for t, c in zip(trials, correct) if keep(t)]
    return float(np.mean(sel)) if sel else None

  by_length = {str(L): accuracy(lambda t, L=L: t.length == L) for L in lengths}
  by_depth = {labels[b]: accuracy(lambda t, b=b: bucket_of(t.depth) == b) for b in range(buckets)}
  table = {str(L): {labels[b]: accuracy(lambda t, L=L, b=b: t.length == L and bucket_of(t.depth) == b)
                    for b in range(buckets)} for L in lengths}
  n = len(correct)
  acc = float(np.mean(correct)) if n else None  # None: every length skipped
  return {"acc": acc, "acc_stderr": mean_stderr(correct), "n": n, "by_length": by_length, "by_depth": by_depth,
          "by_length_depth": table, "skipped_lengths": {str(L): skipped[L] for L in sorted(skipped)},
          "trials": records}
