"""Training-curve comparison: first step at a target loss and the steps ratio, on synthetic metrics.jsonl."""

import json
import math

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
  result = curves.compare([str(tmp_path / "vanilla"), str(tmp_path / "ssa")], "loss", target)
  first = [math.ceil(r * math.log(10) / 10) * 10 for r in (1000.0, 1000.0 / 1.45)]
  assert [r["step_at_target"] for r in result["runs"]] == first
  assert result["runs"][1]["steps_ratio_vs_first"] == pytest.approx(1.45, rel=0.01)
  assert result["runs"][0]["skipped_lines"] == {"not_json": 1}


def test_default_target_is_first_runs_final_value_and_cli_writes_outputs(tmp_path):
  _write_run(tmp_path / "a", rate=1000.0)
  _write_run(tmp_path / "b", rate=500.0)
  out = tmp_path / "out"
  result = curves.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
  assert result["target"] == pytest.approx(2.0 + 3.0 * math.exp(-5.0))
  assert result["runs"][0]["step_at_target"] == 5000
  assert result["runs"][1]["step_at_target"] == 2500  # 500 * 5
  assert (out / "curves.json").is_file() and (out / "curves_loss.png").stat().st_size > 0


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
