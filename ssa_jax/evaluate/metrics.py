"""Per-document scores -> lm-eval's task metrics and their standard errors (same formulas, same bootstrap)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ssa_jax.evaluate.tasks import LOGLIKELIHOOD, MULTIPLE_CHOICE, Doc, TaskSpec

NA = "N/A"


def mean(xs: Sequence[float]) -> float:
  """lm-eval's mean: a sequential Python sum over the count."""
  return sum(xs) / len(xs)


def mean_stderr(xs: Sequence[float]) -> float | str:
  """Standard error of a mean (sample std, n - 1); "N/A" for fewer than two values (as lm-eval)."""
  if len(xs) < 2:
    return NA
  mu = mean(xs)
  return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) / math.sqrt(len(xs))


def bootstrap_perplexity_stderr(lls: Sequence[float], iters: int = 100_000) -> float | str:
  """Bootstrap stderr of exp(-mean(ll)) drawn exactly as lm-eval's `bootstrap_stderr`.

  lm-eval draws chunks of min(1000, iters) resamples; chunk i uses Python's `random.Random(i)` and
  `rnd.choices(xs, k=n)`, i.e. index floor(random() * n). numpy's legacy MT19937 seeded with the list [i] (not
  an array, which is taken as a scalar) runs the same init_by_array and 53-bit random(), so the indices are
  identical; only each resample mean's float summation order differs (pairwise vs sequential, ~1e-16 relative).
  """
  xs = np.asarray(lls, np.float64)
  n = len(xs)
  if n < 2 or iters <= 0:
    return NA
  chunk = min(1000, iters)
  stats = []
  for i in range(iters // chunk):
    u = np.random.RandomState([i]).random_sample(chunk * n)
    idx = np.floor(u * n).astype(np.int64).reshape(chunk, n)
    stats.append(np.exp(-xs[idx].mean(axis=1)))
  res = np.concatenate(stats)
  return float(np.std(res, ddof=1))


def aggregate(spec: TaskSpec, docs: Sequence[Doc], per_doc: list[dict], bootstrap_iters: int = 100_000
              ) -> dict[str, float | str]:
  """{"metric,none": value, "metric_stderr,none": stderr} in the task's metric order (per_doc: see score_task)."""
  if spec.output_type == MULTIPLE_CHOICE:
    lls = [np.asarray(p["lls"], np.float64) for p in per_doc]
    lengths = [np.array([float(len(c)) for c in d.choices]) for d in docs]  # acc_norm: ll per character
    scores = {"acc": [float(int(np.argmax(ll)) == d.gold) for d, ll in zip(docs, lls)],
              "acc_norm": [float(int(np.argmax(ll / n)) == d.gold) for d, ll, n in zip(docs, lls, lengths)]}
    values = {m: (mean(v), mean_stderr(v)) for m, v in scores.items()}
  elif spec.output_type == LOGLIKELIHOOD:
    lls = [float(p["ll"]) for p in per_doc]
    greedy = [int(p["greedy"]) for p in per_doc]
    values = {"perplexity": (math.exp(-mean(lls)), bootstrap_perplexity_stderr(lls, bootstrap_iters)),
              "acc": (mean(greedy), mean_stderr(greedy))}
  else:  # ROLLING: corpus-level ratios, no stderr
    total_ll = sum(float(p["ll"]) for p in per_doc)
    words, nbytes = sum(d.words for d in docs), sum(d.bytes for d in docs)
    values = {"word_perplexity": (math.exp(-total_ll / words), NA),
              "byte_perplexity": (math.exp(-total_ll / nbytes), NA),
              "bits_per_byte": (-total_ll / nbytes / math.log(2), NA)}
  out: dict[str, float | str] = {}
  for m in spec.metrics:
    out[f"{m},none"], out[f"{m}_stderr,none"] = values[m]
  return out
