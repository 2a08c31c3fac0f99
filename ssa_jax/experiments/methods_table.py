"""Every attention variant on the paper's three synthetic studies and on the demo-corpus comparison, one table.

  python -m ssa_jax.experiments.methods_table --variants=vanilla,ssa,gated,diff --seeds=0,1,2 \
      --workdir=runs/methods_table [--studies=graph,denoise,imbalance,compare] [--graph_steps=N] \
      [--denoise_steps=N] [--imbalance_steps=N] [--compare_config=configs/compare_tiny.py --compare_steps=N]

Each study runs every variant x seed with its own default budget (the same for every variant; --<study>_steps
overrides it for all of them); each run's metrics go to WORKDIR/studies/<study>/<variant>_seed<seed>.json and a
rerun with the same budget reads them back. The comparison is `python -m ssa_jax.experiments.compare` run as a
subprocess into WORKDIR/compare (it resumes and skips its finished runs itself); its metric is each run's final
validation perplexity from WORKDIR/compare/report.json. Then WORKDIR/methods_table.md and .json hold, per study
and metric, each variant's mean +- sample std over seeds and whether it differs from the reference ('vanilla')
beyond seed noise, by the comparison's own rule (NOISE_RULE). A variant without a meaning in a study (e.g.
ssa_ws) is 'n/a' there, with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ml_collections

from ssa_jax.errors import ConfigError
from ssa_jax.experiments import common, denoise, graph, imbalance
from ssa_jax.experiments.compare import report as compare_report
from ssa_jax.experiments.compare.cli import parse_list, variant_parts
from ssa_jax.runtime import cli_errors

STUDIES = {"graph": graph, "denoise": denoise, "imbalance": imbalance}
PARTS = (*STUDIES, "compare")
NOISE_RULE = ("lower is better for every metric; a variant differs from the reference beyond seed noise when "
              "|mean difference| > 2 x the larger of the two sample standard deviations and every seed's paired "
              "difference has the same sign (the comparison's verdict rule; with 3 seeds a coarse screen, not a test)")
RUN_KEYS_IGNORED = ("seeds", "seed", "variants", "out_dir", "log_every")  # fields that do not change one run


def study_metrics(study: str, config: ml_collections.ConfigDict) -> list[str]:
  """The metrics of `study` that go into the table."""
  if study == "graph":
    return ["cross_entropy", "err_map"]
  if study == "denoise":
    return ["risk"]
  return imbalance.metric_names(config)


def study_config(study: str, steps: int) -> ml_collections.ConfigDict:
  """The study's default config, quiet, with `steps` optimizer steps when > 0."""
  config = STUDIES[study].default_config()
  config.log_every = 0
  if steps > 0:
    config.steps = steps
  return config


def cached_run(path: Path, config: ml_collections.ConfigDict, variant, seed: int, study: str) -> dict[str, float]:
  """One study run's metrics, read back from `path` when it was made with the same config, else run and stored."""
  key = {k: v for k, v in json.loads(config.to_json_best_effort()).items() if k not in RUN_KEYS_IGNORED}
  if path.is_file():
    stored = json.loads(path.read_text())
    if stored["config"] == key:
      print(f"[table] {study} {variant.name} seed {seed}: done before, read back", flush=True)
      return stored["metrics"]
  start = time.perf_counter()
  result = STUDIES[study].run_variant(config, variant, seed)
  metrics = {m: float(result[m]) for m in study_metrics(study, config)}
  path.parent.mkdir(parents=True, exist_ok=True)
  common.write_json(path, {"config": key, "variant": variant.name, "seed": seed, "metrics": metrics})
  shown = "  ".join(f"{m} {v:.4f}" for m, v in metrics.items())
  print(f"[table] {study} {variant.name} seed {seed}: {shown} ({time.perf_counter() - start:.1f} s)", flush=True)
  return metrics


def run_study(study: str, variants: list[str], seeds: list[int], workdir: Path, steps: int) -> dict[str, Any]:
  """{metric: {variant: [value per seed]}} and {variant: reason} for the variants without a meaning here."""
  config = study_config(study, steps)
  parsed, not_applicable = {}, {}
  for name in variants:
    try:
      parsed[name] = STUDIES[study].parse(name)[0]
    except ConfigError as e:
      not_applicable[name] = str(e)
  values: dict[str, dict[str, list[float]]] = {m: {v: [] for v in parsed} for m in study_metrics(study, config)}
  for seed in seeds:
    for name, variant in parsed.items():
      metrics = cached_run(workdir / "studies" / study / f"{name}_seed{seed}.json", config, variant, seed, study)
      for m, value in metrics.items():
        values[m][name].append(value)
  budget = {k: v for k, v in config.to_dict().items() if k not in RUN_KEYS_IGNORED}
  return {"values": values, "not_applicable": not_applicable, "budget": budget}


def run_compare(variants: list[str], seeds: list[int], workdir: Path, config: str, steps: int) -> dict[str, Any]:
  """The comparison (a subprocess, its output shown) and each variant's final validation perplexity per seed."""
  if len(variants) < 2:
    raise ConfigError(f"--variants: the comparison needs at least two variants, got {variants}")
  command = [sys.executable, "-m", "ssa_jax.experiments.compare", f"--config={config}",
             f"--variants={','.join(variants)}", f"--seeds={','.join(map(str, seeds))}",
             f"--workdir={workdir / 'compare'}"] + ([f"--config.train.steps={steps}"] if steps > 0 else [])
  print("[table] " + " ".join(command[1:]), flush=True)
  done = subprocess.run(command, check=False)
  if done.returncode:
    raise ConfigError(f"the comparison exited with {done.returncode} (see its output above); run the same "
                      "command again to continue it")
  report = json.loads((workdir / "compare" / "report.json").read_text())
  by = {(r["variant"], r["seed"]): r["final_val_ppl"] for r in report["runs"].values()}
  budget = {"config": config, "steps": report["runs"][next(iter(report["runs"]))]["final_step"],
            "tokens_per_run": report["cost"][variants[0]]["tokens_trained"]}
  return {"values": {"val_ppl": {v: [by[(v, s)] for s in seeds] for v in variants}}, "not_applicable": {},
          "budget": budget}


def against_reference(values: list[float], ref_values: list[float], variant: str, ref: str) -> dict[str, Any]:
  """mean / std of `values` and, against the reference's, the difference and whether it is beyond seed noise."""
  row = compare_report.mean_std(values)
  if variant == ref:
    return row
  v = compare_report.verdict(variant, ref, values, ref_values)
  return {**row, "difference": v["difference"], "beyond_noise": v["beyond_spread"]}


def build_table(parts: dict[str, dict[str, Any]], variants: list[str], seeds: list[int]) -> dict[str, Any]:
  """The table's numbers (methods_table.json) from each part's {values, not_applicable, budget}."""
  ref = "vanilla" if "vanilla" in variants else variants[0]
  studies = {}
  for part, res in parts.items():
    studies[part] = {m: {v: against_reference(vals[v], vals.get(ref, []), v, ref) if v in vals else None
                         for v in variants} for m, vals in res["values"].items()}
  return {"variants": variants, "seeds": seeds, "reference": ref, "noise_rule": NOISE_RULE, "studies": studies,
          "not_applicable": {p: r["not_applicable"] for p, r in parts.items() if r["not_applicable"]},
          "budgets": {p: r["budget"] for p, r in parts.items()}}


def cell(row: dict[str, Any] | None) -> str:
  """'0.844 ± 0.012' (4 and 2 significant digits: the imbalance losses are small), with '(lower)' / '(higher)'
  when beyond seed noise; 'n/a' for no row."""
  if row is None:
    return "n/a"
  text = f"{row['mean']:.4g}" + (f" ± {row['std']:.2g}" if row["std"] is not None else "")
  if row.get("beyond_noise"):
    text += " (lower)" if row["difference"] < 0 else " (higher)"
  return text


def markdown(table: dict[str, Any]) -> str:
  """methods_table.md: one table per study, variants as rows, metrics as columns."""
  lines = ["# Attention variants: synthetic studies and the demo comparison", "",
           f"Mean ± sample std over seeds {table['seeds']}. Reference: `{table['reference']}`. (lower) / (higher): "
           f"beyond seed noise against it. Rule: {table['noise_rule']}.", ""]
  for part, metrics in table["studies"].items():
    lines += [f"## {part}", "", "| variant | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    lines += [f"| {v} | " + " | ".join(cell(metrics[m][v]) for m in metrics) + " |" for v in table["variants"]]
    lines += [f"- n/a `{v}`: {why}" for v, why in table["not_applicable"].get(part, {}).items()]
    lines += ["", f"Budget: `{json.dumps(table['budgets'][part])}`", ""]
  return "\n".join(lines)


def parse_args(argv: list[str] | None):
  """The command's flags."""
  parser = cli_errors.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default="vanilla,ssa,gated,gated_head,diff,fox,leviathan",
                      help="comma-separated comparison names (configs/models.py), e.g. vanilla,ssa,gated,ssa+gated")
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
  parser.add_argument("--workdir", required=True, help="runs, methods_table.md and methods_table.json go here")
  parser.add_argument("--studies", default=",".join(PARTS), help=f"comma-separated parts of {PARTS}")
  # Literal flag names: tests/test_docs_commands.py reads them from this source.
  parser.add_argument("--graph_steps", type=int, default=0, help="the graph study's steps (0: its default)")
  parser.add_argument("--denoise_steps", type=int, default=0, help="the denoising study's steps (0: its default)")
  parser.add_argument("--imbalance_steps", type=int, default=0, help="the imbalance study's steps (0: its default)")
  parser.add_argument("--compare_config", default="configs/compare_tiny.py", help="the comparison's --config")
  parser.add_argument("--compare_steps", type=int, default=0, help="config.train.steps of every run (0: the config's)")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the chosen parts, writes WORKDIR/methods_table.md and .json, returns the table."""
  args = parse_args(argv)
  variants, seeds = parse_list(args.variants, "variants"), parse_list(args.seeds, "seeds", int)
  parts = parse_list(args.studies, "studies")
  for name in variants:
    variant_parts(name)  # an unknown name fails here, before anything runs
  unknown = [p for p in parts if p not in PARTS]
  if unknown:
    raise ConfigError(f"--studies: unknown {unknown}; expected some of {PARTS}")
  workdir = Path(args.workdir)
  results = {}
  for part in parts:
    if part == "compare":
      results[part] = run_compare(variants, seeds, workdir, args.compare_config, args.compare_steps)
    else:
      results[part] = run_study(part, variants, seeds, workdir, getattr(args, f"{part}_steps"))
  table = build_table(results, variants, seeds)
  workdir.mkdir(parents=True, exist_ok=True)
  common.write_json(workdir / "methods_table.json", table)
  (workdir / "methods_table.md").write_text(markdown(table) + "\n")
  print(markdown(table), flush=True)
  print(f"[table] wrote {workdir / 'methods_table.md'} and {workdir / 'methods_table.json'}", flush=True)
  return table


if __name__ == "__main__":
  cli_errors.run_argv(main)
