"""Per-document scores -> lm-eval's task metrics and their standard errors (same formulas, same bootstrap)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ssa_jax.evaluate.tasks import LOGLIKELIHOOD, MULTIPLE_CHOICE, ROLLING, Doc, TaskSpec

NA = "N/A"


def mean(xs: Sequence[float]) -> float:
  """lm-eval's mean: a sequential Python sum over the count."""
  return sum(xs) / len(xs)


def sample_stddev(xs: Sequence[float]) -> float:
  """Standard deviation with Bessel's correction (n - 1)."""
  mu = mean(xs)
  return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1))


def mean_stderr(xs: Sequence[float]) -> float | str:
  """Standard error of a mean; "N/A" for fewer than two values (as lm-eval)."""
  if len(xs) < 2:
    return NA
  return sample_stddev(xs) / math.sqrt(len(xs))


def bootstrap_perplexity_stderr(lls: Sequence[float], iters: int = 100_000) -> float | str:
  """Bootstrap stderr of exp(-mean(ll)) drawn exactly as lm-eval's `bootstrap_stderr`.

  lm-eval draws chunks of min(1000, iters) resamples; chunk i uses Python's `random.Random(i)` and
  `rnd.choices(xs, k=n)`, i.e. index floor(random() * n). numpy's legacy MT19937 seeded with the array [i]
  (a Python list: a numpy array seed is taken as a scalar) runs the same init_by_array and the same 53-bit random() formula, so the indices are identical; only
  the float summation order of each resample's mean differs (pairwise vs sequential, ~1e-16 relative).
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


def multiple_choice_scores(doc: Doc, lls: np.ndarray) -> dict[str, float]:
  """acc (argmax ll is gold) and acc_norm (argmax ll / characters of the choice is gold) for one document."""
  lengths = np.array([float(len(c)) for c in doc.choices])
  return {"acc": 1.0 if int(np.argmax(lls)) == doc.gold else 0.0,
          "acc_norm": 1.0 if int(np.argmax(lls / lengths)) == doc.gold else 0.0}


def aggregate(spec: TaskSpec, docs: Sequence[Doc], per_doc: list[dict], bootstrap_iters: int = 100_000
              ) -> dict[str, float | str]:
  """{"metric,none": value, "metric_stderr,none": stderr} in the task's metric order.

  per_doc[i]: multiple choice {"lls": [..]}; loglikelihood {"ll", "greedy"}; rolling {"ll"}.
  """
  out: dict[str, float | str] = {}
  if spec.output_type == MULTIPLE_CHOICE:
    scores = [multiple_choice_scores(d, np.asarray(p["lls"], np.float64)) for d, p in zip(docs, per_doc)]
    for m in spec.metrics:
      values = [s[m] for s in scores]
      out[f"{m},none"], out[f"{m}_stderr,none"] = mean(values), mean_stderr(values)
  elif spec.output_type == LOGLIKELIHOOD:
    lls = [float(p["ll"]) for p in per_doc]
    for m in spec.metrics:
      if m == "perplexity":
        out["perplexity,none"] = math.exp(-mean(lls))
        out["perplexity_stderr,none"] = bootstrap_perplexity_stderr(lls, bootstrap_iters)
      elif m == "acc":
        values = [int(p["greedy"]) for p in per_doc]
        out["acc,none"], out["acc_stderr,none"] = mean(values), mean_stderr(values)
  elif spec.output_type == ROLLING:
    total_ll = sum(float(p["ll"]) for p in per_doc)
    words, nbytes = sum(d.words for d in docs), sum(d.bytes for d in docs)
    values = {"word_perplexity": math.exp(-total_ll / words), "byte_perplexity": math.exp(-total_ll / nbytes),
              "bits_per_byte": -total_ll / nbytes / math.log(2)}
    for m in spec.metrics:
      out[f"{m},none"], out[f"{m}_stderr,none"] = values[m], NA
  else:
    raise ValueError(f"task {spec.name}: unknown output type {spec.output_type!r}")
  return out
