"""Passkey retrieval (the paper's Table 4): a key hidden at a random depth in filler text, decoded greedily.

Prompt = instruction, filler sentences with the key sentence inserted after a uniformly drawn number of
them, then the question; as many fillers as fit in the target length. Seeded: the same config gives the
same prompts. Accuracy per length, per depth bucket, and per (length, depth bucket).
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections
import numpy as np

from ssa_jax.data.tokenizer import Tokenizer
from ssa_jax.evaluate.generate import greedy_generate


@dataclasses.dataclass(frozen=True)
class Trial:
  length: int  # target prompt length in tokens
  depth: float  # fraction of the filler before the key
  key: str
  prompt: str


def _prompt(cfg: ml_collections.ConfigDict, n_fill: int, n_before: int, key: str) -> str:
  fill = [cfg.filler] * n_fill
  parts = [cfg.instruction] + fill[:n_before] + [cfg.key_sentence.format(key=key)] + fill[n_before:] + [cfg.question]
  return " ".join(parts)


def make_trials(cfg: ml_collections.ConfigDict, tokenizer: Tokenizer) -> list[Trial]:
  """`cfg.trials` prompts per length in `cfg.lengths`, seeded by `cfg.seed`."""
  rng = np.random.default_rng(cfg.seed)
  filler_tokens = len(tokenizer.encode(" " + cfg.filler, add_bos=False))
  trials = []
  for length in cfg.lengths:
    sample_key = "9" * cfg.digits
    fixed = len(tokenizer.encode(_prompt(cfg, 0, 0, sample_key)))
    n_fill = max((int(length) - fixed) // max(filler_tokens, 1), 0)
    # Token counts do not add up exactly across sentence joins: shrink until the prompt fits.
    while n_fill > 0 and len(tokenizer.encode(_prompt(cfg, n_fill, 0, sample_key))) > length:
      n_fill -= 1
    for _ in range(cfg.trials):
      key = str(int(rng.integers(10 ** (cfg.digits - 1), 10 ** cfg.digits)))
      depth = float(rng.uniform(0.0, 1.0))
      n_before = min(int(round(depth * n_fill)), n_fill)
      trials.append(Trial(int(length), depth, key, _prompt(cfg, n_fill, n_before, key)))
  return trials


def evaluate_passkey(model, params, tokenizer: Tokenizer, cfg: ml_collections.ConfigDict,
                     add_bos: bool | None = None, batch_size: int = 16) -> dict:
  """Runs every trial; returns overall accuracy, its stderr, and the breakdowns (plus each trial)."""
  trials = make_trials(cfg, tokenizer)
  prompts = [tokenizer.encode(t.prompt, add_bos=add_bos) for t in trials]
  skipped = []
  if model.config.learned_positions:  # GPT-2 cannot go past its position table
    fits = [len(p) + cfg.max_new_tokens <= model.config.max_seq_len for p in prompts]
    skipped = sorted({t.length for t, f in zip(trials, fits) if not f})
    trials = [t for t, f in zip(trials, fits) if f]
    prompts = [p for p, f in zip(prompts, fits) if f]
  outputs = greedy_generate(model, params, prompts, cfg.max_new_tokens, max_batch=batch_size)
  correct, records = [], []
  for t, p, o in zip(trials, prompts, outputs):
    text = tokenizer.decode(o)
    ok = t.key in text
    correct.append(float(ok))
    records.append({"length": t.length, "prompt_tokens": len(p), "depth": round(t.depth, 4), "key": t.key,
                    "output": text, "correct": ok})
  buckets = int(cfg.depth_buckets)
  bucket_of = lambda d: min(int(d * buckets), buckets - 1)
  label = lambda b: f"{b / buckets:.2f}-{(b + 1) / buckets:.2f}"
  by_length = {str(L): float(np.mean([c for t, c in zip(trials, correct) if t.length == L]))
               for L in dict.fromkeys(t.length for t in trials)}
  by_depth, table = {}, {}
  for b in range(buckets):
    sel = [c for t, c in zip(trials, correct) if bucket_of(t.depth) == b]
    by_depth[label(b)] = float(np.mean(sel)) if sel else None
  for L in dict.fromkeys(t.length for t in trials):
    table[str(L)] = {}
    for b in range(buckets):
      sel = [c for t, c in zip(trials, correct) if t.length == L and bucket_of(t.depth) == b]
      table[str(L)][label(b)] = float(np.mean(sel)) if sel else None
  n = len(correct)
  acc = float(np.mean(correct)) if n else None  # every length skipped (past the position table)
  stderr = math.sqrt(sum((c - acc) ** 2 for c in correct) / (n - 1)) / math.sqrt(n) if n > 1 else "N/A"
  return {"acc": acc, "acc_stderr": stderr, "n": n, "by_length": by_length, "by_depth": by_depth,
          "by_length_depth": table, "skipped_lengths": skipped, "trials": records}
