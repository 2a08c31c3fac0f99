"""Evaluates the final parameters of a run into WORKDIR/results.json (lm-eval layout, see ssa_jax.evaluate)."""

from __future__ import annotations

from typing import Any

from etils import epath


def evaluate_at_end(run, model, params, summary: dict[str, Any]) -> epath.Path:
  """Runs config.eval's tasks (and passkey when config.eval.passkey) on `params`; returns the results path."""
  from ssa_jax.evaluate import run_eval

  ev = run.config.eval
  tasks = [t for t in str(ev.tasks).split(",") if t]
  if ev.passkey:
    tasks.append("passkey")
  output = run.workdir / "results.json"
  run_eval(
      model, params, run.tokenizer, tasks=tasks, data_dir=ev.data_dir or None, limit=ev.limit or None,
      batch_size=ev.batch_size, max_length=run.config.train.seq_len, output=str(output),
      extra={
          "checkpoint": str(run.workdir / "checkpoints"),
          "step": summary["step"],
          "validation": {k: summary.get(k) for k in ("val_loss", "val_ppl")},
      },
  )
  return output
