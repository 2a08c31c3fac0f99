"""run_eval: read tasks, build lm-eval requests, score them in batches, aggregate, write results JSON."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import ml_collections

from ssa_jax.data.tokenizer import load_tokenizer
from ssa_jax.evaluate import metrics as metrics_lib
from ssa_jax.evaluate import results as results_lib
from ssa_jax.evaluate.config import eval_config
from ssa_jax.evaluate.passkey import evaluate_passkey
from ssa_jax.evaluate.preflight import check_options, missing_file
from ssa_jax.evaluate.readers import read_task
from ssa_jax.evaluate.requests import TokenRequest, encode_pairs, rolling_requests
from ssa_jax.evaluate.scoring import ScoreStats, Scorer
from ssa_jax.evaluate.tasks import MULTIPLE_CHOICE, PASSKEY, ROLLING, TASKS, parse_task_names
from ssa_jax.model.params import param_counts


def parse_add_bos(value: Any) -> bool | None:
  """'auto' / None -> None (the tokenizer's default); 'true' / 'false' or a bool -> that bool."""
  if value is None or isinstance(value, bool):
    return value
  choices = {"auto": None, "": None, "none": None, "true": True, "1": True, "yes": True,
             "false": False, "0": False, "no": False}
  v = str(value).strip().lower()
  if v not in choices:
    raise ValueError(f"add_bos: expected auto, true or false, got {value!r}")
  return choices[v]


def rolling_loglikelihoods(scorer: Scorer, tokenizer, texts: list[str], max_length: int, add_bos: bool | None,
                           desc: str) -> list[float]:
  """Each text's log-likelihood summed over its rolling windows (lm-eval's loglikelihood_rolling)."""
  reqs = rolling_requests(tokenizer, texts, max_length, add_bos)
  ll, _ = scorer.score(reqs, desc=desc)
  totals = [0.0] * len(texts)
  for r, v in zip(reqs, ll):
    totals[r.owner] += float(v)
  return totals


def score_task(scorer: Scorer, tokenizer, spec, docs, max_length: int, add_bos: bool | None
               ) -> tuple[list, list[dict], list[str]]:
  """(scored docs, their raw scores ({"lls"} / {"ll", "greedy"} / {"ll"}), messages of the docs left out).

  A continuation of no tokens or more than max_length cannot be scored (lm-eval asserts): its document is left
  out, reported, and the task goes on."""
  if spec.output_type == ROLLING:
    totals = rolling_loglikelihoods(scorer, tokenizer, [d.text for d in docs], max_length, add_bos, spec.name)
    return list(docs), [{"ll": t} for t in totals], []
  pairs = [p for d in docs for p in d.pairs]
  owners = [i for i, d in enumerate(docs) for _ in d.pairs]
  encoded = encode_pairs(tokenizer, pairs, add_bos)
  bad = {}
  for (_, cont), owner in zip(encoded, owners):
    if (not cont or len(cont) > max_length) and owner not in bad:
      bad[owner] = (f"task {spec.name}: document {owner}: a continuation of {len(cont)} tokens "
                    f"(expected 1 to max_length={max_length}); left out")
  keep = [i for i in range(len(docs)) if i not in bad]
  new_index = {old: new for new, old in enumerate(keep)}
  reqs = [TokenRequest(tuple(ctx), tuple(cont), new_index[o]) for (ctx, cont), o in zip(encoded, owners) if o not in bad]
  ll, greedy = scorer.score(reqs, desc=spec.name)
  if spec.output_type == MULTIPLE_CHOICE:
    per_doc = [{"lls": []} for _ in keep]
    for r, v in zip(reqs, ll):
      per_doc[r.owner]["lls"].append(float(v))
  else:
    per_doc = [{"ll": float(ll[i]), "greedy": bool(greedy[i])} for i in range(len(reqs))]
  return [docs[i] for i in keep], per_doc, list(bad.values())


@dataclasses.dataclass
class _Outcome:
  """What the tasks gave, filled task by task: results JSON pieces keyed by task name."""

  results: dict[str, Any] = dataclasses.field(default_factory=dict)
  samples: dict[str, dict] = dataclasses.field(default_factory=dict)
  paths: dict[str, str] = dataclasses.field(default_factory=dict)
  missing: dict[str, str] = dataclasses.field(default_factory=dict)  # task -> why it did not run
  skipped: dict[str, dict] = dataclasses.field(default_factory=dict)  # task -> records left out
  timing: dict[str, dict] = dataclasses.field(default_factory=dict)

  def skip(self, name: str, why: str) -> None:
    """Records (and prints) that task `name` did not run."""
    self.missing[name] = why
    print(f"[eval] SKIPPED {why}", flush=True)


def _read_task(name: str, data_dir: str | None, limit: int | None, out: _Outcome):
  """The task's documents, or None (recorded in `out`) when its file is missing or holds none."""
  why = missing_file(name, data_dir)
  if why:
    out.skip(name, why)
    return None
  read = read_task(TASKS[name], data_dir, limit)
  if read.skipped:
    out.skipped[name] = {"count": len(read.skipped), "records": read.skipped[:20]}
  if not read.docs:
    out.skip(name, f"task {name}: {read.path} holds no valid documents")
    return None
  return read


def _score_file_task(scorer: Scorer, tokenizer, name: str, read, max_length: int, bos: bool | None,
                     bootstrap_iters: int, out: _Outcome) -> None:
  """Scores one task read from its file and records its metrics, sample counts and timing in `out`."""
  spec = TASKS[name]
  t0, r0, tok0 = time.time(), scorer.stats.requests, scorer.stats.tokens
  docs, per_doc, left_out = score_task(scorer, tokenizer, spec, read.docs, max_length, bos)
  if left_out:  # joins the task's skipped records (the first 20 kept)
    print(f"[eval] {name}: {len(left_out)} document(s) left out, e.g. {left_out[0]}", flush=True)
    entry = out.skipped.setdefault(name, {"count": 0, "records": []})
    entry["count"] += len(left_out)
    entry["records"] = (entry["records"] + left_out)[:20]
  if not docs:
    out.skip(name, f"task {name}: no document could be scored")
    return
  values = metrics_lib.aggregate(spec, docs, per_doc, bootstrap_iters)
  out.results[name] = results_lib.task_entry(name, len(docs), values)
  out.samples[name] = {"original": read.original, "effective": len(docs)}
  out.paths[name] = read.path
  dt = time.time() - t0
  out.timing[name] = {"seconds": dt, "requests": scorer.stats.requests - r0,
                      "requests_per_s": (scorer.stats.requests - r0) / max(dt, 1e-9),
                      "tokens_per_s": (scorer.stats.tokens - tok0) / max(dt, 1e-9)}


def _run_passkey(model, variables, tokenizer, pk_cfg: ml_collections.ConfigDict, bos: bool | None, batch_size: int,
                 out: _Outcome) -> dict:
  """Passkey retrieval; its result joins `out` unless every length was skipped. Returns its own section."""
  t0 = time.time()
  passkey_out = evaluate_passkey(model, variables, tokenizer, pk_cfg, add_bos=bos, batch_size=batch_size)
  for why in passkey_out["skipped_lengths"].values():
    print(f"[eval] SKIPPED {why}", flush=True)
  passkey_out["config"] = pk_cfg.to_dict()
  if passkey_out["n"]:
    out.results[PASSKEY] = results_lib.task_entry(
        PASSKEY, passkey_out["n"], {"acc,none": passkey_out["acc"], "acc_stderr,none": passkey_out["acc_stderr"]})
    out.samples[PASSKEY] = {"original": passkey_out["n"], "effective": passkey_out["n"]}
    out.timing[PASSKEY] = {"seconds": time.time() - t0}
  else:
    out.missing[PASSKEY] = "passkey: every length was skipped (see passkey.skipped_lengths)"
  return passkey_out


def _own_section(cfg, tokenizer, stats: ScoreStats, wall: float, out: _Outcome) -> dict[str, Any]:
  """results["ssa_jax"]: the model's SSA settings and counts, throughput, what was skipped, the devices."""
  return {
      "checkpoint": None, "step": None,
      "ssa": dataclasses.asdict(cfg.ssa), "family": cfg.family,
      **param_counts(cfg), "wall_time_s": wall,
      "scoring_seconds": stats.seconds, "requests": stats.requests,
      "requests_per_s": stats.requests / stats.seconds if stats.seconds else None,
      "tokens_per_s": stats.tokens / stats.seconds if stats.seconds else None,
      # tokens_per_s counts the tokens lm-eval would run; prefix sharing and packing compute fewer:
      "computed_token_fraction": stats.computed_tokens / stats.tokens if stats.tokens else None,
      "padding_fraction": 1 - stats.computed_tokens / stats.padded_tokens if stats.padded_tokens else None,
      "tasks": out.timing, "missing_tasks": out.missing, "skipped_records": out.skipped,
      "devices": [f"{d.platform}:{d.device_kind}" for d in jax.local_devices()],
      "tokenizer": tokenizer.path,
  }


def run_eval(model, variables, tokenizer, tasks, data_dir: str | None = None, limit: int | None = None,
             batch_size: int = 16, max_length: int | None = None, output: str | None = None,
             extra: dict[str, Any] | None = None, add_bos: Any = None, bootstrap_iters: int = 100_000,
             passkey: ml_collections.ConfigDict | None = None, model_args: str = "",
             matmul_precision: str = "auto", vocab_slack: int = 1024, show_progress: bool = True,
             pack_length: int = 512) -> dict:
  """Evaluates (model, variables) on `tasks` ('a,b' or a list; 'passkey' included) and returns lm-eval's layout.

  `tokenizer`: a Tokenizer or a path for load_tokenizer. A task whose file is missing, or passkey with every
  length skipped, is reported (console and results["ssa_jax"]["missing_tasks"]) and the others still run;
  results["results"] holds the tasks that ran (possibly none). `output`: where the JSON goes (None: nowhere)."""
  start = time.time()
  if isinstance(tokenizer, str):
    tokenizer = load_tokenizer(tokenizer)
  names = parse_task_names(tasks)
  pk_cfg = passkey if passkey is not None else eval_config().passkey
  max_length = check_options(model.config, tokenizer, names, limit, max_length, pk_cfg, vocab_slack)
  bos = parse_add_bos(add_bos)
  limit = int(limit) if limit else None

  out, scorer = _Outcome(), None
  for name in names:
    read = None if name == PASSKEY else _read_task(name, data_dir, limit, out)
    if read is None:
      continue
    if scorer is None:  # built on the first task that has documents (compiling is the slow part)
      scorer = Scorer(model, variables, max_length, batch_size, matmul_precision=matmul_precision,
                      show_progress=show_progress, pack_length=pack_length)
    _score_file_task(scorer, tokenizer, name, read, max_length, bos, bootstrap_iters, out)
  passkey_out = _run_passkey(model, variables, tokenizer, pk_cfg, bos, batch_size, out) if PASSKEY in names else None

  own = _own_section(model.config, tokenizer, scorer.stats if scorer else ScoreStats(), time.time() - start, out)
  own.update(extra or {})
  config = {
      "model": "ssa_jax", "model_args": model_args, "batch_size": batch_size, "batch_sizes": [],
      "device": jax.local_devices()[0].device_kind, "use_cache": None, "limit": limit,
      "bootstrap_iters": bootstrap_iters, "gen_kwargs": None, "random_seed": 0, "numpy_seed": 1234,
      "torch_seed": 1234, "fewshot_seed": 1234, "add_bos": bos, "max_length": max_length,
  }
  results = results_lib.assemble(out.results, TASKS, out.paths, out.samples, config, tokenizer, max_length, start,
                                 own, passkey_out)
  print(results_lib.summary_table(results), flush=True)
  if output:
    results_lib.write(results, output)
    print(f"[eval] results -> {output}", flush=True)
  return results
