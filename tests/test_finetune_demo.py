"""The miniature fine-tune's driver: its paired summary, and (slow) the whole command on a few steps."""

import pytest

from ssa_jax.experiments.finetune_demo import run, summary, table


def test_summary_pairs_each_variant_with_vanillas_run_of_the_same_seed():
  rows = [{"variant": "vanilla", "seed": 0, "before_ppl": 50.0, "after_ppl": 49.0},
          {"variant": "vanilla", "seed": 1, "before_ppl": 50.0, "after_ppl": 48.0},
          {"variant": "ssa", "seed": 0, "before_ppl": 50.1, "after_ppl": 47.0},
          {"variant": "ssa", "seed": 1, "before_ppl": 50.1, "after_ppl": 47.5}]
  stats = summary(rows, ["vanilla", "ssa"])
  assert stats["vanilla"]["after"] == pytest.approx({"mean": 48.5, "std": 0.7071068, "n": 2})
  assert stats["ssa"]["change"]["mean"] == pytest.approx(-2.85)
  assert stats["ssa"]["vs_vanilla"] == pytest.approx({"mean": -1.25, "std": 1.0606602, "n": 2})  # -2, -0.5
  assert "vs_vanilla" not in stats["vanilla"]
  md = table(stats, 50.0)
  assert "| ssa | 2 | 50.100 +- 0.000 | 47.250 +- 0.354 | -2.850 +- 0.354 | -1.250 +- 1.061 |" in md


@pytest.mark.slow
def test_the_whole_command_on_a_few_steps(tmp_path):
  """Pretrain 4 steps, export, fine-tune vanilla and SSA (the config's 107 steps, 2 sequences a step)."""
  report = run(str(tmp_path / "ft"), pretrain_steps=4, variants=["vanilla", "ssa"], seeds=[0], finetune_batch=2,
               cache_dir=str(tmp_path / "cache"))
  rows = {r["variant"]: r for r in report["rows"]}
  # SSA starts near identity: its step-0 perplexity is the pretrained model's within 0.5%.
  assert rows["vanilla"]["before_ppl"] == pytest.approx(report["pretrained_ppl"], rel=1e-6)
  assert rows["ssa"]["before_ppl"] == pytest.approx(report["pretrained_ppl"], rel=5e-3)
  assert (tmp_path / "ft" / "finetune_demo.md").is_file()
  again = run(str(tmp_path / "ft"), pretrain_steps=4, variants=["vanilla", "ssa"], seeds=[0], finetune_batch=2,
              cache_dir=str(tmp_path / "cache"))  # complete: nothing trains again, the same figures
  assert again["rows"][1]["after_ppl"] == pytest.approx(rows["ssa"]["after_ppl"], rel=1e-6)
