"""The comparison's PNGs: validation perplexity and training loss (mean ± std over seeds), Figure 2, temperatures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import ticker

from ssa_jax.analysis import curves, norms
from ssa_jax.experiments.common import pyplot

LOSS_SMOOTHING = 0.9  # the EMA of curves' default for training loss


def _band(ax, steps, values_SX: np.ndarray, label: str) -> None:
  """Mean over seeds as a line, ± one standard deviation shaded (no band for one seed)."""
  mean = values_SX.mean(0)
  line, = ax.plot(steps, mean, label=label, marker="o" if len(steps) <= 30 else None, ms=3)
  if values_SX.shape[0] > 1:
    std = values_SX.std(0, ddof=1)
    ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)


def _curves_figure(path: Path, report: dict, metric: str) -> None:
  """Validation perplexity (log axis, plain tick labels) or training loss (each run EMA-smoothed) per variant, at
  the steps every seed logged: mean ± std over seeds."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  steps_key, smoothing = ("val_steps", 0.0) if metric == "val_ppl" else ("loss_steps", LOSS_SMOOTHING)
  lo, hi = np.inf, 0.0
  for v in report["variants"]:
    runs = [r for r in report["runs"].values() if r["variant"] == v]
    steps = sorted(set.intersection(*(set(r[steps_key]) for r in runs)))
    by_step = [dict(zip(r[steps_key], curves.ema(r[metric], smoothing))) for r in runs]
    values = np.array([[b[s] for s in steps] for b in by_step])
    _band(ax, steps, values, v)
    lo, hi = min(lo, values.min()), max(hi, values.max())
  if metric == "val_ppl":
    curves.log_y_axis(ax, lo / 1.03, hi * 1.03)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_xlabel("step")
  ax.set_ylabel("validation perplexity" if metric == "val_ppl" else f"training loss (EMA {LOSS_SMOOTHING})")
  ax.set_title(f"mean ± std over seeds {report['seeds']}", fontsize=9)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def figure2_figure(path: Path, report: dict, runs: list[dict]) -> None:
  """ssa_jax.analysis.norms' violins, each variant's tokens pooled over its seeds."""
  results = []
  for v in report["variants"]:
    mine = [r["analysis"]["figure2"] for r in runs if r["variant"] == v]
    summary = {k: {"per_token": [x for f in mine for x in f[k]["per_token"]]} for k in ("spec_raw", "spec_eff",
                                                                                         "spikiness")}
    results.append({"label": v, "summary": summary, "num_tokens": len(summary["spec_raw"]["per_token"])})
  norms.plot(path, results)


def temperatures_figure(path: Path, report: dict) -> bool:
  """Per-layer mean of every temperature (error bars: std over seeds; shaded: mean 5th-95th percentile over
  tokens and heads). False when no variant has temperatures (nothing written)."""
  names = sorted({n for t in report["temperatures"].values() for n in t})
  if not names:
    return False
  plt = pyplot()
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
  for ax, name in zip(axes[0], names):
    for v in report["variants"]:
      stats = report["temperatures"][v].get(name)
      if stats is None:
        continue
      layers = np.arange(len(stats["mean"]))
      mean = np.array([m["mean"] for m in stats["mean"]])
      err = np.array([m["std"] or 0.0 for m in stats["mean"]])
      bars = ax.errorbar(layers, mean, yerr=err, marker="o", ms=4, capsize=3, label=v)
      ax.fill_between(layers, stats["p5"], stats["p95"], color=bars[0].get_color(), alpha=0.12, lw=0)
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set_xlabel("layer")
    role = "inverse temperature of the attention logits" if name == "tau_q" else f"multiplies {name[-1]}"
    ax.set_ylabel(f"{name} ({role}; 1 = vanilla)", fontsize=8)
    ax.set_xticks(range(len(mean)))
    ax.legend(fontsize=8)
  fig.suptitle("per-layer temperatures on the validation tokens (shaded: 5th-95th percentile)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def write_all(root: Path, report: dict, runs: list[dict]) -> dict[str, str]:
  """Writes every figure into `root`; returns {what: file name} of those written."""
  written = {"validation": "curves_val_ppl.png", "loss": "curves_loss.png", "figure2": "norms.png"}
  _curves_figure(root / written["validation"], report, "val_ppl")
  _curves_figure(root / written["loss"], report, "loss")
  figure2_figure(root / written["figure2"], report, runs)
  if temperatures_figure(root / "temperatures.png", report):
    written["temperatures"] = "temperatures.png"
  return written
