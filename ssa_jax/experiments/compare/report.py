"""The comparison's report: every number read back from the runs' own metrics.jsonl and analyses (cli.py then
writes it as WORKDIR/report.json, with report.md from markdown.py and the PNGs from figures.py).

Spread over seeds is the sample standard deviation (n - 1); with one seed there is none and no verdict.
The verdict compares the final validation perplexity of each variant with the reference's: a difference
counts as beyond the seed-to-seed spread when it is larger than twice the larger of the two standard
deviations and has the same sign in every seed (runs of one seed read the same batches, so they pair).
"""

from __future__ import annotations

import json
import statistics
from typing import Any

import jax
import numpy as np

from ssa_jax.analysis import curves

FIGURE2_KEYS = ("spec_raw", "spec_eff", "opnorm", "opnorm_eff", "tau_q", "spikiness")
VERDICT_RULE = ("a difference is beyond the seed-to-seed spread when |mean difference| > 2 x the larger seed "
                "standard deviation and every seed's paired difference has the same sign")


def mean_std(values: list[float]) -> dict[str, Any]:
  """{'mean', 'std' (sample, None for one value), 'n', 'values'}; missing values (None) are left out."""
  values = [float(v) for v in values if v is not None]
  return {"mean": statistics.fmean(values) if values else None,
          "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values), "values": values}


def fmt(ms: dict[str, Any] | None, digits: int = 2) -> str:
  """'53.85 ± 0.12' (or '53.85' for one value, '-' for none)."""
  if not ms or ms["mean"] is None:
    return "-"
  return f"{ms['mean']:.{digits}f}" + (f" ± {ms['std']:.{digits}f}" if ms["std"] is not None else "")


def read_run(run: dict) -> dict[str, Any]:
  """One run's own numbers, read back from its metrics.jsonl, its compare state and its analysis."""
  run_dir, state, analysis = run["dir"], run["state"], run["analysis"]
  val_steps, val_ppl, _ = curves.read_metric(run_dir, "val_ppl")
  _, val_loss, _ = curves.read_metric(run_dir, "val_loss")
  loss_steps, loss, _ = curves.read_metric(run_dir, "loss")
  _, tps, _ = curves.read_metric(run_dir, "tokens_per_s")
  t = state["config"]["train"]
  return {
      "variant": run["variant"], "seed": run["seed"], "dir": run_dir,
      "val_steps": val_steps, "val_ppl": val_ppl, "final_step": val_steps[-1], "final_val_ppl": val_ppl[-1],
      "final_val_loss": val_loss[-1], "loss_steps": loss_steps, "loss": loss,
      # The first logged interval includes compilation: the median of the others is the steady rate.
      "tokens_per_s": statistics.median(tps[1:] or tps),
      "wall_s": sum(s["wall_s"] for s in state["sessions"]), "sessions": len(state["sessions"]),
      "tokens_trained": int(t["steps"]) * int(t["global_batch_size"]) * int(t["seq_len"]),
      "params": analysis["params"], "ssa_params": analysis["ssa_params"],
  }


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(d, dict):
    return {prefix: d}
  return {key: leaf for k, v in d.items() for key, leaf in _flatten(v, f"{prefix}.{k}" if prefix else k).items()}


def differing_fields(configs: list[dict]) -> list[str]:
  """Config fields (dotted) whose values are not the same in every run."""
  flats = [_flatten(c) for c in configs]
  keys = sorted(set().union(*flats))
  return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def verdict(variant: str, ref: str, var_ppl: list[float], ref_ppl: list[float]) -> dict[str, Any]:
  """Is `variant`'s final validation perplexity different from `ref`'s beyond the seed-to-seed spread?"""
  v, r = mean_std(var_ppl), mean_std(ref_ppl)
  diff = v["mean"] - r["mean"]
  rel = diff / r["mean"]
  head = (f"{variant} vs {ref}: final validation perplexity {v['mean']:.2f} vs {r['mean']:.2f} "
          f"({diff:+.2f}, {rel:+.1%})")
  if min(v["n"], r["n"]) < 2:
    return {"variant": variant, "difference": diff, "relative": rel, "beyond_spread": None,
            "line": f"{head}; one seed, so the seed-to-seed spread is unknown: no verdict (use --seeds=0,1,2)"}
  spread = max(v["std"], r["std"])
  paired = [a - b for a, b in zip(var_ppl, ref_ppl)]
  same_sign = all(p < 0 for p in paired) or all(p > 0 for p in paired)
  beyond = abs(diff) > 2 * spread and same_sign
  seeds = f"{min(v['n'], r['n'])} seeds"
  if beyond:
    better = "lower (better)" if diff < 0 else "higher (worse)"
    line = (f"{head}; seed-to-seed std up to {spread:.2f}: {variant} is {better} beyond the seed-to-seed "
            f"spread in every seed ({seeds}; a small sample, at this budget only)")
  else:
    why = "smaller than twice" if abs(diff) <= 2 * spread else "not of one sign across seeds, despite exceeding twice"
    line = (f"{head}; seed-to-seed std up to {spread:.2f}: the difference is {why} the spread, so this "
            f"comparison shows no difference ({seeds})")
  return {"variant": variant, "difference": diff, "relative": rel, "spread": spread, "paired": paired,
          "beyond_spread": beyond, "line": line}


def _steps_to_target(ref_run: dict, run: dict, metric: str) -> dict[str, Any]:
  """curves.compare([reference, run]) with its defaults: the reference's final smoothed value as the target."""
  res = curves.compare([ref_run["dir"], run["dir"]], metric, labels=["reference", "run"])
  return {"target": res["target"], "smoothing": res["smoothing"], "reference_step": res["runs"][0]["step_at_target"],
          "step": res["runs"][1]["step_at_target"], "ratio": res["runs"][1]["steps_ratio_vs_first"]}


def _temperature_summary(stats: list[dict]) -> dict[str, Any]:
  """One variant's temperatures over its seeds: per layer mean ± std of the seed means, mean 5th / 95th percentile."""
  return {name: {"mean": [mean_std([st[name]["mean"][layer] for st in stats])
                          for layer in range(len(stats[0][name]["mean"]))],
                 "p5": np.mean([st[name]["p5"] for st in stats], axis=0).tolist(),
                 "p95": np.mean([st[name]["p95"] for st in stats], axis=0).tolist()}
          for name in sorted(stats[0])}


def _zero_shot_summary(results: list[dict | None]) -> dict[str, Any] | None:
  """One variant's zero-shot scores over its seeds (tasks every seed has), or None when a seed has none."""
  if any(r is None for r in results):
    return None
  tasks = sorted(set.intersection(*(set(r["scores"]) for r in results)))
  summary: dict[str, Any] = {task: {m: mean_std([r["scores"][task][m] for r in results])
                                    for m in results[0]["scores"][task]} for task in tasks}
  summary["_missing"] = results[0]["missing"]
  return summary


def build(runs: list[dict], variants: list[str], seeds: list[int], config_name: str = "") -> dict[str, Any]:
  """The report's numbers (report.json), from runs [{name, variant, seed, dir, state, analysis}]."""
  ref = "vanilla" if "vanilla" in variants else variants[0]
  per_run = {r["name"]: read_run(r) for r in runs}
  by = {(r["variant"], r["seed"]): r["name"] for r in runs}
  of = lambda v: [per_run[by[(v, s)]] for s in seeds]  # noqa: E731  the runs of one variant, in seed order
  analysis = {r["name"]: r["analysis"] for r in runs}

  steps = sorted({s for r in per_run.values() for s in r["val_steps"]})
  validation = {v: {str(step): mean_std([r["val_ppl"][r["val_steps"].index(step)] for r in of(v)
                                         if step in r["val_steps"]]) for step in steps} for v in variants}
  final = {v: {"val_ppl": mean_std([r["final_val_ppl"] for r in of(v)]),
               "val_loss": mean_std([r["final_val_loss"] for r in of(v)]),
               "step": sorted({r["final_step"] for r in of(v)})} for v in variants}

  targets: dict[str, Any] = {v: {} for v in variants if v != ref}
  for v in targets:
    for metric in ("loss", "val_ppl"):
      per_seed = [_steps_to_target(per_run[by[(ref, s)]], per_run[by[(v, s)]], metric) for s in seeds]
      ratios = [p["ratio"] for p in per_seed if p["ratio"] is not None]
      targets[v][metric] = {"per_seed": per_seed, "ratio": mean_std(ratios) if ratios else None,
                            "not_reached": sum(p["step"] is None for p in per_seed)}

  figure2 = {v: {k: mean_std([analysis[by[(v, s)]]["figure2"][k]["mean"] for s in seeds]) for k in FIGURE2_KEYS}
             for v in variants}
  for v in variants:
    for k in ("spec_raw", "spec_eff", "opnorm_eff"):
      figure2[v][f"{k}_ref_over_this"] = figure2[ref][k]["mean"] / figure2[v][k]["mean"]

  temperatures = {v: _temperature_summary([analysis[by[(v, s)]]["temperatures"] for s in seeds]) for v in variants}
  zero_shot = {v: _zero_shot_summary([analysis[by[(v, s)]]["zero_shot"] for s in seeds]) for v in variants}
  zero_shot = {v: z for v, z in zero_shot.items() if z is not None}

  cost = {v: {"wall_s": mean_std([r["wall_s"] for r in of(v)]), "tokens_per_s": mean_std([r["tokens_per_s"] for r in of(v)]),
              "params": of(v)[0]["params"], "ssa_params": of(v)[0]["ssa_params"],
              "tokens_trained": of(v)[0]["tokens_trained"]} for v in variants}

  configs = {name: r["state"]["config"] for name, r in zip(per_run, runs)}
  verdicts = [verdict(v, ref, [r["final_val_ppl"] for r in of(v)], [r["final_val_ppl"] for r in of(ref)])
              for v in variants if v != ref]
  return {
      "config_file": config_name, "variants": variants, "seeds": seeds, "reference": ref,
      "device": {"platform": jax.default_backend(), "kind": jax.devices()[0].device_kind, "count": jax.device_count()},
      "runs": per_run, "validation_ppl": validation, "final": final, "steps_to_target": targets,
      "figure2": figure2, "temperatures": temperatures, "zero_shot": zero_shot, "cost": cost,
      "differing_fields": differing_fields(list(configs.values())), "configs": configs,
      "verdict_rule": VERDICT_RULE, "verdicts": verdicts,
  }


def console_summary(report: dict[str, Any]) -> str:
  """A few lines for the terminal: final perplexity per variant and the verdicts."""
  lines = [f"final validation perplexity (mean ± std over seeds {report['seeds']}):"]
  lines += [f"  {v:12s} {fmt(report['final'][v]['val_ppl'])}" for v in report["variants"]]
  return "\n".join(lines + [v["line"] for v in report["verdicts"]])
