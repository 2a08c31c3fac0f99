"""Results JSON in lm-eval's layout (plus our own `ssa_jax` block) and the one-table console summary."""

from __future__ import annotations

import json
import math
from typing import Any

from etils import epath

from ssa_jax.evaluate.tasks import PASSKEY, TaskSpec

# lm-eval's aggregation and higher_is_better of each metric.
AGGREGATION = {"acc": "mean", "acc_norm": "mean", "perplexity": "perplexity",
               "word_perplexity": "weighted_perplexity", "byte_perplexity": "weighted_perplexity",
               "bits_per_byte": "bits_per_byte"}
HIGHER_IS_BETTER = {"acc": True, "acc_norm": True, "perplexity": False, "word_perplexity": False,
                    "byte_perplexity": False, "bits_per_byte": False}


def task_config(spec: TaskSpec, path: str) -> dict[str, Any]:
  """The `configs` entry of one task (lm-eval's field names where they apply)."""
  return {
      "task": spec.name, "dataset_path": spec.hf_dataset, "data_file": path,
      f"{'test' if spec.split == 'test' else 'validation'}_split": spec.split,
      "doc_to_text": spec.prompt, "target_delimiter": " ", "fewshot_delimiter": "\n\n", "num_fewshot": 0,
      "output_type": spec.output_type,
      "metric_list": [{"metric": m, "aggregation": AGGREGATION[m], "higher_is_better": HIGHER_IS_BETTER[m]}
                      for m in spec.metrics],
      "repeats": 1, "metadata": {"version": spec.version},
  }


def task_entry(name: str, n: int, metrics: dict[str, Any]) -> dict[str, Any]:
  """results[task]: name, alias, sample_len, then "metric,none" / "metric_stderr,none" pairs."""
  return {"name": name, "alias": name, "sample_len": n, **metrics}


def assemble(task_results: dict[str, dict], specs: dict[str, TaskSpec], paths: dict[str, str],
             samples: dict[str, dict[str, int]], config: dict[str, Any], tokenizer, max_length: int,
             date: float, own: dict[str, Any], passkey: dict | None = None) -> dict[str, Any]:
  """The whole results document."""
  names = list(task_results)
  token = lambda i: None if i is None else [tokenizer.decode([i]), str(i)]  # noqa: E731  (lm-eval: [text, id])
  hib = {n: {m: HIGHER_IS_BETTER[m] for m in specs[n].metrics} for n in names if n in specs}
  if PASSKEY in task_results:
    hib[PASSKEY] = {"acc": True}
  out: dict[str, Any] = {
      "results": task_results,
      "group_subtasks": {},
      "configs": {n: task_config(specs[n], paths[n]) for n in names if n in specs},
      "versions": {n: (specs[n].version if n in specs else 1.0) for n in names},
      "n-shot": {n: 0 for n in names},
      "higher_is_better": hib,
      "n-samples": samples,
      "config": config,
      "date": date,
      "tokenizer_pad_token": None,
      "tokenizer_eos_token": token(tokenizer.eos_id),
      "tokenizer_bos_token": token(tokenizer.bos_id),
      "eot_token_id": tokenizer.eos_id,
      "max_length": max_length,
  }
  if passkey is not None:
    out["passkey"] = {k: v for k, v in passkey.items() if k not in ("acc", "acc_stderr")}
  out["ssa_jax"] = own
  return out


def write(results: dict[str, Any], path: str) -> None:
  """Writes the results JSON (local or gs://), creating the parent directory."""
  p = epath.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  p.write_text(json.dumps(results, indent=2, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))


def _fmt(v) -> str:
  if v is None:  # a value that could not be computed (e.g. no trial ran)
    return "-"
  if isinstance(v, str):
    return v
  if isinstance(v, float) and (math.isinf(v) or math.isnan(v) or abs(v) >= 1e5):
    return f"{v:.4g}"
  return f"{v:.4f}"


def summary_table(results: dict[str, Any]) -> str:
  """| Task | Metric | Value | Stderr | rows in the order the tasks ran, then one line per task or passkey length
  that did not run, with its whole reason (never cut: it usually names the file that was looked for)."""
  rows = [("Task", "Metric", "Value", "Stderr")]
  notes = []
  passkey = results.get("passkey") or {}
  for task, entry in results["results"].items():
    for key, value in entry.items():
      if "," not in key or "_stderr," in key:
        continue
      metric = key.split(",")[0]
      rows.append((task, metric, _fmt(value), _fmt(entry.get(f"{metric}_stderr,none", "N/A"))))
    if task == PASSKEY:
      for length, acc in passkey.get("by_length", {}).items():
        rows.append((task, f"acc@{length}", _fmt(acc), ""))
  for length, why in passkey.get("skipped_lengths", {}).items():
    rows.append((PASSKEY, f"acc@{length}", "(skipped)", "-"))
    notes.append(f"skipped: {why}")
  for task, message in results.get("ssa_jax", {}).get("missing_tasks", {}).items():
    rows.append((task, "(not run)", "-", "-"))
    notes.append(f"not run: {message}")
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
  sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  return "\n".join([line(rows[0]), sep] + [line(r) for r in rows[1:]] + notes)
