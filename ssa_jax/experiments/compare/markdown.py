"""report.md of a comparison, from the numbers of report.build (nothing is computed here but layout)."""

from __future__ import annotations

import json
from typing import Any

from ssa_jax.experiments.compare.report import FIGURE2_KEYS, fmt


def _table(header: list[str], rows: list[list[str]]) -> str:
  """A markdown table; a '|' inside a cell is escaped so that it cannot split the cell."""
  cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
  lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
  return "\n".join(lines)


def _setup(report: dict[str, Any]) -> str:
  ref_run = next(r for r in report["runs"].values() if r["variant"] == report["reference"])
  config = report["configs"][next(n for n, r in report["runs"].items() if r is ref_run)]
  m, t, d = config["model"], config["train"], config["data"]
  data = d.get("path") or "the offline demo corpus (KJV Bible, SlimPajama layout)"
  dev = report["device"]
  validation = (f"{t['eval_batches']} batches x {t['global_batch_size']} x {t['seq_len']} tokens of the "
                f"'{d.get('validation_split', 'validation')}' split")
  return "\n".join([
      f"- model: {m['family']}, d_model {m['d_model']}, {m['num_layers']} layers, {m['num_heads']} heads, "
      f"vocabulary {m['vocab_size']}, context {m['max_seq_len']}",
      f"- budget per run: {t['steps']} steps x {t['global_batch_size']} sequences x {t['seq_len']} tokens = "
      f"{ref_run['tokens_trained']:,} tokens; lr {t['lr']} ({t.get('schedule', '')}), warmup {t['warmup_steps']}",
      f"- data: {data}; every run reads the same batches in the same order (config.data.seed {d.get('seed')}); "
      f"document masking {'on' if d.get('document_masking') else 'off'} (config.data.document_masking)",
      f"- validation: {validation}, every {t['eval_every']} steps and at the end, the same batches for every run",
      f"- device: {dev['count']} x {dev['kind']} ({dev['platform']})",
      f"- runs differ only in: {', '.join(report['differing_fields']) or 'nothing'}",
  ])


def _validation(report: dict[str, Any]) -> str:
  variants = report["variants"]
  steps = sorted({int(s) for v in variants for s in report["validation_ppl"][v]})
  rows = [[str(step)] + [fmt(report["validation_ppl"][v].get(str(step))) for v in variants] for step in steps]
  return _table(["step"] + variants, rows)


def _targets(report: dict[str, Any]) -> str:
  ref, rows = report["reference"], []
  for v, by_metric in report["steps_to_target"].items():
    row = [v]
    for metric in ("loss", "val_ppl"):
      t = by_metric[metric]
      steps = ", ".join(f"{p['reference_step']}/{p['step'] if p['step'] is not None else 'never'}"
                        for p in t["per_seed"])
      targets = ", ".join(f"{p['target']:.4g}" for p in t["per_seed"])
      ratio = fmt(t["ratio"]) + "x" if t["ratio"] else "-"
      row += [targets, steps, ratio + (f" ({t['not_reached']} seed(s) never reach it)" if t["not_reached"] else "")]
    rows.append(row)
  header = ["variant", "loss target", f"steps {ref}/variant", "ratio", "val ppl target", f"steps {ref}/variant",
            "ratio"]
  return _table(header, rows)


def _zero_shot(report: dict[str, Any]) -> str:
  zs = report["zero_shot"]
  if not zs:
    return "Not run (give `--eval_tasks=... --eval_data_dir=...`)."
  columns = sorted({(task, m) for v in zs.values() for task, ms in v.items() if task != "_missing" for m in ms})
  rows = [[v] + [fmt(zs[v].get(task, {}).get(m), 4) for task, m in columns] for v in zs]
  text = _table(["variant"] + [f"{task} {m}" for task, m in columns], rows)
  missing = next(iter(zs.values())).get("_missing") or {}
  if missing:
    text += "\n\nNot run: " + "; ".join(missing.values())
  return text


def _figure2(report: dict[str, Any]) -> str:
  ref, f2 = report["reference"], report["figure2"]
  rows = [[v] + [fmt(f2[v][k], 3) for k in FIGURE2_KEYS]
          + [f"{f2[v]['spec_raw_ref_over_this']:.2f}x", f"{f2[v]['spec_eff_ref_over_this']:.2f}x"]
          for v in report["variants"]]
  return _table(["variant", "spec_raw ‖W^T x‖", "spec_eff tau_q ‖W^T x‖", "‖W‖_2", "tau_q ‖W‖_2", "tau_q",
                 "spikiness", f"{ref}/this raw", f"{ref}/this eff"], rows)


def _temperatures(report: dict[str, Any]) -> str:
  columns = [(v, name) for v in report["variants"] for name in sorted(report["temperatures"][v])]
  if not columns:
    return "No variant has temperatures."
  layers = max(len(report["temperatures"][v][n]["mean"]) for v, n in columns)
  rows = []
  for layer in range(layers):
    row = [str(layer)]
    for v, name in columns:
      s = report["temperatures"][v][name]
      row.append(f"{fmt(s['mean'][layer], 3)} [{s['p5'][layer]:.2f}, {s['p95'][layer]:.2f}]")
    rows.append(row)
  return _table(["layer"] + [f"{v} {name}" for v, name in columns], rows)


def _cost(report: dict[str, Any]) -> str:
  rows = [[v, f"{c['params']:,}", f"{c['ssa_params']:,}", f"{c['tokens_trained']:,}", fmt(c["wall_s"], 0),
           fmt(c["tokens_per_s"], 0)] for v, c in report["cost"].items()]
  return _table(["variant", "parameters", "of which SSA", "tokens trained", "wall time (s)", "tokens/s"], rows)


def _configs(report: dict[str, Any]) -> str:
  names = list(report["configs"])
  ref_name = next(n for n in names if report["runs"][n]["variant"] == report["reference"])
  parts = [f"The reference run's whole config ({ref_name}):", "```json",
           json.dumps(report["configs"][ref_name], indent=1), "```", "", "Each variant's `model.ssa` section:"]
  first_config = {}
  for name in names:
    first_config.setdefault(report["runs"][name]["variant"], report["configs"][name])
  parts += [f"- {v}: `{json.dumps(c['model']['ssa'], sort_keys=True)}`" for v, c in first_config.items()]
  parts += ["", "Every run's exact config: `report.json` (`configs`) and `runs/<variant>_seed<seed>/config.json`."]
  return "\n".join(parts)


def markdown(report: dict[str, Any], figures: dict[str, str]) -> str:
  """The whole report.md."""
  ref = report["reference"]
  image = lambda key, alt: f"\n\n![{alt}]({figures[key]})" if key in figures else ""  # noqa: E731
  sections = [
      f"# {', '.join(v for v in report['variants'] if v != ref)} vs {ref}: seeds {report['seeds']}"
      + (f", {report['config_file']}" if report["config_file"] else ""),
      "**Verdict** (" + report["verdict_rule"] + "):\n\n" + "\n".join(f"- {v['line']}" for v in report["verdicts"]),
      "## Setup\n\n" + _setup(report),
      "## Validation perplexity (mean ± std over seeds)\n\n" + _validation(report)
      + image("validation", "validation perplexity"),
      "## Steps to the reference's target (Figure 4)\n\n"
      f"Per seed, the target is {ref}'s final smoothed value (training loss: EMA 0.9; validation perplexity: "
      f"as measured) and each run's first step reaching it on its smoothed curve (`ssa_jax.analysis.curves`); "
      f"ratio = steps({ref}) / steps(variant), > 1 means fewer steps (the paper: 1.45x for SSA, Pythia-160M, "
      "15B tokens). Steps are those of the logged or evaluated points only.\n\n" + _targets(report)
      + image("loss", "training loss"),
      "## Zero-shot tasks (final checkpoints)\n\n" + _zero_shot(report),
      "## Figure 2: query-key norms and attention spikiness\n\n"
      "`ssa_jax.analysis.norms` on the first validation windows (the same tokens for every run), each number the "
      "mean over tokens, layers and heads, then mean ± std over seeds. spec = ‖W^T x‖ with W = W_q W_k^T "
      "(eff: times tau_q), ‖W‖_2 its operator norm; spikiness = ‖s‖_1 / (‖s‖_2^2 L), lower = spikier ('-': a "
      "method whose attention rows are not softmax(q k^T) rows, such as differential, forgetting or Leviathan's "
      "selective attention, has no spikiness here).\n\n"
      + _figure2(report) + image("figure2", "Figure 2"),
      "## Temperatures per layer\n\n"
      "Each layer's mean over validation tokens and heads (mean ± std over seeds) and, in brackets, the 5th and "
      "95th percentiles (mean over seeds). tau multiplies q (tau_q, an inverse temperature of the attention "
      "logits) or v; vanilla is 1 everywhere.\n\n" + _temperatures(report) + image("temperatures", "temperatures"),
      "## Cost\n\n" + _cost(report) + "\n\nWall time: all training sessions of a run (compilation, validation "
      "and checkpoints included; analysis excluded). tokens/s: median of the logged intervals after the first "
      "(which includes compilation), mean over seeds.",
      "## Configs\n\n" + _configs(report),
  ]
  return "\n\n".join(sections) + "\n"
