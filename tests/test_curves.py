"""Training-curve comparison: first step at a target loss and the steps ratio, on synthetic metrics.jsonl."""

import json
import math

import numpy as np
import pytest

from ssa_jax.analysis import curves


def _write_run(path, rate, steps=range(0, 5001, 10), with_val=True):
  path.mkdir()
  lines = []
  for s in steps:
    lines.append(json.dumps({"step": s, "loss": 2.0 + 3.0 * math.exp(-s / rate), "lr": 1e-3, "tokens_per_s": 1.0}))
    if with_val and s % 500 == 0:
      lines.append(json.dumps({"step": s, "val_loss": 2.1 + 3.0 * math.exp(-s / rate), "val_ppl": 9.0}))
  lines.insert(3, "{not json")
  (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_steps_ratio_matches_the_analytic_crossing(tmp_path):
  _write_run(tmp_path / "vanilla", rate=1000.0)
  _write_run(tmp_path / "ssa", rate=1000.0 / 1.45)
  target = 2.3  # loss(s) = 2 + 3 exp(-s / r) crosses 2.3 at s = r ln 10
  result = curves.compare([str(tmp_path / "vanilla"), str(tmp_path / "ssa")], "loss", target, smoothing=0.0)
  first = [math.ceil(r * math.log(10) / 10) * 10 for r in (1000.0, 1000.0 / 1.45)]
  assert [r["step_at_target"] for r in result["runs"]] == first
  assert result["runs"][1]["steps_ratio_vs_first"] == pytest.approx(1.45, rel=0.01)
  assert result["runs"][0]["skipped_lines"] == {"not_json": 1}


def test_explicit_zero_smoothing_targets_the_raw_final_value_and_cli_writes_outputs(tmp_path):
  _write_run(tmp_path / "a", rate=1000.0)
  _write_run(tmp_path / "b", rate=500.0)
  out = tmp_path / "out"
  result = curves.main([str(tmp_path / "a"), str(tmp_path / "b"), "--smoothing", "0", "--out", str(out)])
  assert result["target"] == pytest.approx(2.0 + 3.0 * math.exp(-5.0))
  assert result["runs"][0]["step_at_target"] == 5000
  assert result["runs"][1]["step_at_target"] == 2500  # 500 * 5
  assert (out / "curves.json").is_file() and (out / "curves_loss.png").stat().st_size > 0


def _write_losses(path, steps, losses):
  path.mkdir()
  (path / "metrics.jsonl").write_text("".join(json.dumps({"step": int(s), "loss": float(v)}) + "\n" for s, v in zip(steps, losses)))


def test_default_target_is_the_first_runs_final_smoothed_loss_so_one_noisy_step_does_not_reach_it(tmp_path):
  """The old default (raw final loss, no smoothing) let run b's single low batch at step 200 'reach' the target."""
  rng = np.random.default_rng(0)
  steps = np.arange(0, 1001, 10)
  a_loss = 3.0 + 2.0 * np.exp(-steps / 300) + rng.normal(0, 0.05, steps.size)
  b_loss = 3.0 + 2.0 * np.exp(-steps / 600) + rng.normal(0, 0.05, steps.size)
  b_loss[steps == 200] = a_loss[-1] - 0.1  # a noisy batch, below a's final raw loss
  _write_losses(tmp_path / "a", steps, a_loss)
  _write_losses(tmp_path / "b", steps, b_loss)
  result = curves.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out")])
  # Independent EMA: weights (1 - s) s^(n-1-i), normalised by their sum 1 - s^n.
  s, n = 0.9, steps.size
  weights = (1 - s) * s ** np.arange(n - 1, -1, -1)
  assert result["smoothing"] == s
  assert result["target"] == pytest.approx(float(weights @ a_loss / (1 - s ** n)), rel=1e-9)
  assert result["runs"][0]["step_at_target"] is not None
  hit = result["runs"][1]["step_at_target"]
  assert hit is None or hit > 600, hit


def test_validation_metrics_default_to_no_smoothing(tmp_path):
  _write_run(tmp_path / "a", rate=1000.0)
  result = curves.compare([str(tmp_path / "a")], "val_loss")
  assert result["smoothing"] == 0.0 and result["target"] == pytest.approx(2.1 + 3.0 * math.exp(-5.0))


@pytest.mark.parametrize("lo,hi", [(53.5, 54.1), (50.0, 60.0), (20.0, 90.0), (5.0, 2000.0)])
def test_log_axis_ticks_are_plain_round_numbers(lo, hi):
  ticks = curves.log_ticks(lo, hi)
  assert len(ticks) >= 3 and all(lo <= t <= hi for t in ticks)
  assert all(len(f"{t:g}") <= 6 for t in ticks), ticks


def test_val_ppl_plot_labels_its_log_axis_with_plain_numbers(tmp_path):
  """A perplexity range inside one decade used to get labels like 6x10^1 (or none at all)."""
  steps = list(range(0, 1001, 100))
  for name, rate in (("a", 400.0), ("b", 300.0)):
    path = tmp_path / name
    path.mkdir()
    path.joinpath("metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "val_ppl": 53.0 + 7.0 * math.exp(-s / rate)}) + "\n" for s in steps))
  result = curves.compare([str(tmp_path / "a"), str(tmp_path / "b")], "val_ppl")
  fig = curves.figure(result)
  fig.canvas.draw()
  ax = fig.axes[0]
  labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
  assert len(labels) >= 3
  lo, hi = ax.get_ylim()
  for label in labels:
    assert lo <= float(label) <= hi, label  # plain numbers: no $10^{...}$ mathtext
  assert not [t.get_text() for t in ax.get_yticklabels(minor=True) if t.get_text()]


def test_val_metric_reads_only_validation_lines_and_never_reached_is_none(tmp_path):
  _write_run(tmp_path / "a", rate=1000.0)
  steps, values, _ = curves.read_metric(str(tmp_path / "a"), "val_loss")
  assert steps == list(range(0, 5001, 500))
  result = curves.compare([str(tmp_path / "a")], "val_loss", target=1.0)
  assert result["runs"][0]["step_at_target"] is None
  assert result["runs"][0]["steps_ratio_vs_first"] is None


def test_missing_metrics_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    curves.read_metric(str(tmp_path), "loss")
  _write_run(tmp_path / "a", rate=10.0, with_val=False)
  with pytest.raises(ValueError, match="val_ppl"):
    curves.read_metric(str(tmp_path / "a"), "val_ppl")


def test_a_run_that_never_reaches_the_target_says_so_and_its_figure_renders_without_warnings(tmp_path, capsys):
  """Run b stays above a's final loss: the console says it never reaches the target (not 'at step None'); every
  character of both figures exists in matplotlib's default font (no missing-glyph warning)."""
  import warnings

  steps = np.arange(0, 501, 10)
  _write_losses(tmp_path / "a", steps, 3.0 + 2.0 * np.exp(-steps / 100))
  _write_losses(tmp_path / "b", steps, 4.0 + 2.0 * np.exp(-steps / 100))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    result = curves.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out")])
    curves.plot(tmp_path / "val.png", dict(result, metric="val_ppl"))  # the log axis and its tick labels
  assert result["runs"][1]["step_at_target"] is None
  lines = capsys.readouterr().out.splitlines()
  b_line = next(line for line in lines if line.strip().startswith("b "))
  assert "never reaches target (last step 500)" in b_line and "None" not in b_line, b_line
  assert [str(w.message) for w in caught] == []
