"""Training curves of several runs on one plot (paper Fig. 4) and how many fewer steps each needs to a target.

Reads WORKDIR/metrics.jsonl (one JSON object a line: `step`, `loss`, ...; validation lines carry `val_loss`,
`val_ppl`). For each run: the first step at which the EMA-smoothed metric reaches --target_loss, and
steps(first run) / steps(run), the paper's "1.45x fewer steps". The default target is the first run's final
SMOOTHED value: a raw final training loss is one noisy batch, which a lucky early step of another run can beat.
--smoothing defaults to 0.9 for the training loss and 0 for validation metrics (already means over many batches).

  python -m ssa_jax.analysis.curves runs/vanilla runs/ssa [--metric loss] [--target_loss 3.2] [--out runs/curves]
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ssa_jax.runtime import cli_errors

LOWER_IS_BETTER = ("loss", "val_loss", "val_ppl")
DEFAULT_SMOOTHING = {"loss": 0.9, "val_loss": 0.0, "val_ppl": 0.0}


def read_metric(workdir: str, metric: str) -> tuple[list[int], list[float], dict[str, int]]:
  """(steps, values) of `metric` from WORKDIR/metrics.jsonl, sorted by step; bad lines are counted and skipped."""
  if not Path(workdir).is_dir():
    raise FileNotFoundError(f"workdir {workdir}: does not exist (expected a training run's directory holding "
                            "metrics.jsonl)")
  path = Path(workdir) / "metrics.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: expected a metrics.jsonl written by training")
  bad: dict[str, int] = {}
  points: dict[int, float] = {}
  for line in path.read_text().splitlines():
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      bad["not_json"] = bad.get("not_json", 0) + 1
      continue
    if not isinstance(record, dict) or metric not in record:
      continue  # other kinds of line (e.g. train lines when reading val_ppl)
    try:
      step, value = int(record["step"]), float(record[metric])
    except (KeyError, TypeError, ValueError):
      bad["bad_step_or_value"] = bad.get("bad_step_or_value", 0) + 1
      continue
    if not math.isfinite(value):
      bad["non_finite"] = bad.get("non_finite", 0) + 1
      continue
    points[step] = value  # a resumed run may log a step twice: the later line wins
  for kind, count in bad.items():
    print(f"warning: {path}: skipped {count} line(s): {kind}")
  if not points:
    raise ValueError(f"{path}: no line carries metric {metric!r} with a numeric value")
  steps = sorted(points)
  return steps, [points[s] for s in steps], bad


def ema(values: list[float], smoothing: float) -> list[float]:
  """Debiased exponential moving average (smoothing 0 returns the values unchanged)."""
  if not 0.0 <= smoothing < 1.0:
    raise ValueError(f"--smoothing: expected a value in [0, 1), got {smoothing}")
  out, avg = [], 0.0
  for i, v in enumerate(values):
    avg = smoothing * avg + (1.0 - smoothing) * v
    out.append(avg / (1.0 - smoothing ** (i + 1)))
  return out


def compare(workdirs: list[str], metric: str = "loss", target: float | None = None,
            smoothing: float | None = None, labels: list[str] | None = None) -> dict:
  """Curves, the target (default: the first run's final smoothed value), each run's first step reaching it on its
  smoothed curve, and steps(first run) / steps(run). `smoothing` None: DEFAULT_SMOOTHING[metric]."""
  if metric not in LOWER_IS_BETTER:
    raise ValueError(f"--metric: expected one of {LOWER_IS_BETTER}, got {metric!r}")
  if smoothing is None:
    smoothing = DEFAULT_SMOOTHING[metric]
  labels = labels or [Path(w).name or w for w in workdirs]
  if len(labels) != len(workdirs):
    raise ValueError(f"--labels: expected {len(workdirs)} labels, got {len(labels)}")
  runs = []
  for workdir, label in zip(workdirs, labels):
    steps, raw, bad = read_metric(workdir, metric)
    runs.append({"label": label, "workdir": workdir, "steps": steps, "values": raw,
                 "smoothed": ema(raw, smoothing), "skipped_lines": bad})
  if target is None:
    target = runs[0]["smoothed"][-1]
  # Lower is better: the first step at or below the target, None if never reached.
  reached = lambda run: next((s for s, v in zip(run["steps"], run["smoothed"]) if v <= target), None)  # noqa: E731
  reference = reached(runs[0])
  for run in runs:
    hit = run["step_at_target"] = reached(run)
    run["steps_ratio_vs_first"] = (reference / hit) if (reference is not None and hit) else None
  return {"metric": metric, "target": target, "smoothing": smoothing, "runs": runs}


def log_ticks(lo: float, hi: float, max_ticks: int = 8) -> list[float]:
  """Round tick values in [lo, hi] (lo > 0) for a log axis: 1-2-5 per decade when the range spans decades,
  evenly spaced round numbers when it spans less (a log axis over 50..60 has no power of ten to label)."""
  if not 0 < lo <= hi:
    raise ValueError(f"log axis: expected 0 < lo <= hi, got {lo}, {hi}")
  from matplotlib import ticker

  for subs in ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0, 7.0)):
    ticks = [float(f"{v:.12g}") for v in ticker.LogLocator(base=10, subs=subs).tick_values(lo, hi) if lo <= v <= hi]
    if 3 <= len(ticks) <= max_ticks:
      return ticks
  linear = ticker.MaxNLocator(nbins=min(max_ticks, 6), steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
  return [float(f"{v:.12g}") for v in linear if lo <= v <= hi]  # 53.50000000000001 -> 53.5


def log_y_axis(ax, lo: float, hi: float) -> None:
  """A log y axis over [lo, hi] labelled with `log_ticks` as plain numbers (not 10^x)."""
  from matplotlib import ticker  # optional heavy dependency, needed only for the figure

  ax.set_yscale("log")
  ax.set_ylim(lo, hi)
  ax.yaxis.set_major_locator(ticker.FixedLocator(log_ticks(lo, hi)))
  ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def figure(result: dict):
  """Metric vs step for every run (smoothed), the target as a dashed line and each run's first hit marked."""
  import matplotlib  # optional heavy dependency, needed only for the figure
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for run in result["runs"]:
    line, = ax.plot(run["steps"], run["smoothed"], label=run["label"])
    if run["step_at_target"] is not None:
      ax.axvline(run["step_at_target"], color=line.get_color(), ls=":", lw=1)
  ax.axhline(result["target"], color="k", ls="--", lw=1, label=f"target {result['target']:.4g}")
  ax.set_xlabel("step")
  smoothed = f" (EMA {result['smoothing']:g})" if result["smoothing"] else ""
  ax.set_ylabel(result["metric"] + smoothed)
  if result["metric"] == "val_ppl":
    values = [v for run in result["runs"] for v in run["smoothed"]] + [result["target"]]
    log_y_axis(ax, min(values) / 1.05, max(values) * 1.05)
  ax.legend()
  fig.tight_layout()
  return fig


def plot(path: Path, result: dict) -> None:
  """Writes `figure(result)` as a PNG."""
  import matplotlib.pyplot as plt

  fig = figure(result)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
  parser = cli_errors.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+", help="run directories holding metrics.jsonl; the first is the reference")
  parser.add_argument("--metric", default="loss", choices=LOWER_IS_BETTER)
  parser.add_argument("--target_loss", type=float, default=None,
                      help="target value of --metric (default: the first run's final smoothed value)")
  parser.add_argument("--smoothing", type=float, default=None,
                      help="EMA factor in [0, 1) applied before the search (default: 0.9 for loss, 0 for val_*)")
  parser.add_argument("--labels", nargs="+", default=None)
  parser.add_argument("--out", default="runs/curves")
  args = parser.parse_args(argv)
  result = compare(args.workdirs, args.metric, args.target_loss, args.smoothing, args.labels)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  how = "given" if args.target_loss is not None else f"{result['runs'][0]['label']}'s final smoothed value"
  print(f"{args.metric} target {result['target']:.4f} ({how}; EMA smoothing {result['smoothing']:g})")
  for run in result["runs"]:
    ratio = run["steps_ratio_vs_first"]
    hit = run["step_at_target"]
    reached = (f"first reaches target at step {hit}" if hit is not None else
               f"never reaches target (last step {run['steps'][-1]})")
    print(f"  {run['label']:20s} final {run['smoothed'][-1]:.4f}  {reached}  "
          f"steps(first)/steps = {'n/a' if ratio is None else f'{ratio:.2f}x'}")
  (out / "curves.json").write_text(json.dumps(result, indent=2) + "\n")
  plot(out / f"curves_{args.metric}.png", result)
  print(f"wrote {out / 'curves.json'} and {out / f'curves_{args.metric}.png'}")
  return result


if __name__ == "__main__":
  cli_errors.run_argv(main)
