"""The comparison command (ssa_jax.experiments.compare): its report holds the runs' own numbers, read back from
their metrics.jsonl; runs resume or are skipped on a re-run; the verdict follows its stated rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import models
from ssa_jax.errors import ConfigError
from ssa_jax.experiments.compare import cli as compare_lib
from ssa_jax.experiments.compare import report as compare_report

REPO = Path(__file__).resolve().parents[1]
PIQA = [  # three PIQA-format records (the task file format of ssa_jax.evaluate)
    {"goal": "How do you open a door?", "sol1": "Turn the handle.", "sol2": "Eat the handle.", "label": 0},
    {"goal": "How do you boil water?", "sol1": "Put it in the freezer.", "sol2": "Heat it on a stove.", "label": 1},
    {"goal": "How do you dry a towel?", "sol1": "Hang it in the sun.", "sol2": "Soak it in a bucket.", "label": 0},
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """The demo corpus and a 512-token BPE, written once into a private cache."""
  from ssa_jax.data import demo

  path = tmp_path_factory.mktemp("cache")
  demo.ensure_demo_corpus(str(path))
  demo.ensure_demo_tokenizer(str(path), 512)
  return str(path)


def _base(cache, steps=6):
  """configs/compare_tiny.py shrunk to seconds: a 2-layer, 32-wide model, 6 steps of 8 x 16 tokens."""
  from configs import compare_tiny

  config = compare_tiny.get_config()
  config.data.cache_dir, config.data.demo_vocab_size = cache, 512
  m = config.model
  m.vocab_size, m.d_model, m.num_layers, m.num_heads, m.mlp_dim, m.max_seq_len = 512, 32, 2, 4, 64, 64
  config.train.update(dict(steps=steps, global_batch_size=8, seq_len=16, warmup_steps=2, log_every=1, eval_every=3,
                           eval_batches=2, checkpoint_every=steps, tensorboard=False))
  return config


def _own_metrics(run_dir: Path) -> dict[str, dict[int, float]]:
  """metrics.jsonl read independently of the code under test: {metric: {step: value}}, later lines winning."""
  out: dict[str, dict[int, float]] = {"val_ppl": {}, "loss": {}}
  for line in (run_dir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    for key in out:
      if key in record:
        out[key][record["step"]] = record[key]
  return out


@pytest.fixture(scope="module")
def compared(cache, tmp_path_factory):
  """vanilla and ssa, seeds 0 and 1, trained and reported once for the tests below."""
  workdir = tmp_path_factory.mktemp("compare")
  report = compare_lib.compare(_base(cache), ["vanilla", "ssa"], [0, 1], str(workdir), analysis_tokens=64)
  return workdir, report


def test_report_numbers_are_the_runs_own(compared):
  workdir, report = compared
  written = json.loads((workdir / "report.json").read_text())
  md = (workdir / "report.md").read_text()
  for variant in ("vanilla", "ssa"):
    own = [_own_metrics(workdir / "runs" / f"{variant}_seed{seed}") for seed in (0, 1)]
    assert sorted(own[0]["val_ppl"]) == [3, 6]  # eval_every 3 and the final validation
    for step in (3, 6):
      values = [o["val_ppl"][step] for o in own]
      entry = written["validation_ppl"][variant][str(step)]
      assert entry["values"] == values
      assert entry["mean"] == pytest.approx(np.mean(values), rel=1e-12)
      assert entry["std"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    final = written["final"][variant]["val_ppl"]
    assert final["values"] == [o["val_ppl"][6] for o in own]
    assert f"{final['mean']:.2f} ± {final['std']:.2f}" in md
    cost = written["cost"][variant]
    assert cost["tokens_trained"] == 6 * 8 * 16
    assert (cost["ssa_params"] > 0) == (variant == "ssa")
    for seed in (0, 1):
      run_config = json.loads((workdir / "runs" / f"{variant}_seed{seed}" / "config.json").read_text())
      assert run_config["seed"] == seed
      for key, value in models.SSA_VARIANTS[variant].items():  # the preset reached the run
        assert run_config["model"]["ssa"][key] == value
  assert written == json.loads(json.dumps(report))
  assert "seed" in written["differing_fields"]
  assert all(f == "seed" or f.startswith("model.ssa.") for f in written["differing_fields"])
  verdict = written["verdicts"][0]
  assert verdict["variant"] == "ssa" and verdict["line"] in md
  ssa, vanilla = written["final"]["ssa"]["val_ppl"], written["final"]["vanilla"]["val_ppl"]
  assert verdict["difference"] == pytest.approx(ssa["mean"] - vanilla["mean"])
  for name in ("curves_val_ppl.png", "curves_loss.png", "norms.png", "temperatures.png"):
    assert (workdir / name).read_bytes()[:4] == b"\x89PNG", name
  assert set(written["temperatures"]["ssa"]) >= {"tau_q", "tau_v"} and written["temperatures"]["vanilla"] == {}


def test_rerun_skips_complete_runs_resumes_incomplete_ones_and_adds_zero_shot(compared, cache, tmp_path):
  workdir, report = compared
  runs = workdir / "runs"
  # Which runs the re-run touches: their compare state is rewritten only when they are trained (or resumed).
  before = {d.name: (d / compare_lib.RUN_STATE).stat().st_mtime_ns for d in runs.iterdir()}
  # One run marked as interrupted: the re-run resumes it from its final checkpoint (no step is trained again).
  state = json.loads((runs / "ssa_seed1" / compare_lib.RUN_STATE).read_text())
  state["complete"] = False
  (runs / "ssa_seed1" / compare_lib.RUN_STATE).write_text(json.dumps(state))
  (tmp_path / "piqa_validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PIQA))
  again = compare_lib.compare(_base(cache), ["vanilla", "ssa"], [0, 1], str(workdir), analysis_tokens=64,
                              eval_tasks="piqa", eval_data_dir=str(tmp_path), limit=2)
  after = {d.name: (d / compare_lib.RUN_STATE).stat().st_mtime_ns for d in runs.iterdir()}
  assert {n for n in before if before[n] != after[n]} == {"ssa_seed1"}
  resumed = json.loads((runs / "ssa_seed1" / compare_lib.RUN_STATE).read_text())
  assert resumed["complete"] and len(resumed["sessions"]) == 2 and resumed["sessions"][-1]["end_step"] == 6
  assert again["final"] == json.loads(json.dumps(report["final"]))  # the same final points, read back again
  for variant in ("vanilla", "ssa"):
    accs = [json.loads((runs / f"{variant}_seed{s}" / "compare_eval.json").read_text())["results"]["piqa"]["acc,none"]
            for s in (0, 1)]
    assert again["zero_shot"][variant]["piqa"]["acc"]["values"] == accs
  assert "piqa acc" in (workdir / "report.md").read_text()

  changed = _base(cache)
  changed.train.lr = 1e-3
  with pytest.raises(ConfigError, match=r"vanilla_seed0 was started with another config \(config.train.lr: 0.003 vs"):
    compare_lib.compare(changed, ["vanilla", "ssa"], [0], str(workdir))


def test_variant_presets_are_applied_generically_and_bad_lists_are_refused(cache):
  base = _base(cache)
  base.model.ssa.hidden_ratio = 0.25  # an override of the given config reaches every SSA variant
  for name, preset in models.SSA_VARIANTS.items():
    config = compare_lib.variant_config(base, name, 3)
    assert config.seed == 3 and not config.eval.at_end
    assert all(config.model.ssa[k] == v for k, v in preset.items())
    assert config.model.ssa.hidden_ratio == 0.25
  with pytest.raises(ConfigError, match="--variants: unknown variant 'ssa_typo'"):
    compare_lib.variant_config(base, "ssa_typo", 0)
  with pytest.raises(ConfigError, match="--seeds"):
    compare_lib.parse_list("0,x", "seeds", int)
  with pytest.raises(ConfigError, match="at least two variants"):
    compare_lib.compare(base, ["ssa"], [0], "/nonexistent")


def test_verdict_follows_its_rule():
  one = compare_report.verdict("ssa", "vanilla", [50.0], [52.0])
  assert one["beyond_spread"] is None and "no verdict" in one["line"]
  clear = compare_report.verdict("ssa", "vanilla", [50.0, 50.2, 49.9], [52.0, 52.1, 51.9])
  assert clear["beyond_spread"] is True and "lower (better)" in clear["line"]
  noisy = compare_report.verdict("ssa", "vanilla", [50.0, 53.0], [52.0, 51.5])  # mean -0.25, std up to 2.1
  assert noisy["beyond_spread"] is False and "shows no difference" in noisy["line"]
  # Mean -1.75, more than twice the larger std (0.79), but seed 9 is worse than its pair: not one sign.
  mixed = compare_report.verdict("ssa", "vanilla", [50.0] * 9 + [52.5], [52.0] * 10)
  assert abs(mixed["difference"]) > 2 * mixed["spread"] and mixed["beyond_spread"] is False


def test_cli_mistakes_are_one_line():
  proc = subprocess.run([sys.executable, "-m", "ssa_jax.experiments.compare", "--config=configs/compare_tiny.py",
                         "--variants=vanilla", "--workdir=/tmp/unused_compare"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == ["error: --variants: a comparison needs at least two variants, "
                                              "got ['vanilla']"]
