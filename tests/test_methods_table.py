"""The methods table (ssa_jax.experiments.methods_table) and the adapter that runs an attention method's own module
inside the synthetic studies (ssa_jax.experiments.methods_adapter)."""

from __future__ import annotations

import json
import subprocess

import jax
import numpy as np
import pytest

from ssa_jax.errors import ConfigError
from ssa_jax.experiments import denoise, methods_table
from ssa_jax.experiments.methods_adapter import MethodAttention, kernel_query, method_config
from ssa_jax.model.kernels import Visibility
from ssa_jax.model.methods import method_class


def _qkv(B=2, T=5, H=2, D=4, d=3, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  x_BTd = jax.random.normal(ks[0], (B, T, d))
  return (x_BTd, *(jax.random.normal(k, (B, T, H, D)) for k in ks[1:]))


def test_adapter_equals_the_method_module_called_by_hand():
  x_BTd, q, k, v = _qkv()
  attn = MethodAttention("gated_element", 3, 2, 4, 5)
  params = attn.init(jax.random.PRNGKey(1), x_BTd, q, k, v)
  params = jax.tree_util.tree_map(lambda a: a + 0.5 * jax.random.normal(jax.random.PRNGKey(2), a.shape), params)
  cfg = method_config("gated_element", 3, 2, 4, 5)
  by_hand, _ = method_class(cfg)(cfg).apply({"params": params}, x_BTd, q, k, v, Visibility(), 0, None)
  np.testing.assert_allclose(attn(params, x_BTd, q, k, v), by_hand, rtol=1e-6, atol=1e-6)
  # and by the gated-attention equation: causal softmax(q k^T / sqrt(D)) v times sigmoid(x W_g)
  logits = np.einsum("bthd,bshd->bhts", q, k) / 2.0
  logits = np.where(np.tril(np.ones((5, 5), bool)), logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  y_BTHD = np.einsum("bhts,bshd->bthd", probs / probs.sum(-1, keepdims=True), v)
  gate = 1.0 / (1.0 + np.exp(-np.einsum("btd,dhe->bthe", x_BTd, params["kernel"])))
  np.testing.assert_allclose(attn(params, x_BTd, q, k, v), y_BTHD * gate, rtol=1e-5, atol=1e-5)


def test_kernel_query_keeps_the_studys_logits():
  x_BTd, q, k, v = _qkv(H=1)
  attn = MethodAttention("softmax", 3, 1, 4, 5)
  out = attn({}, x_BTd, kernel_query(q, 0.7), k, v)
  logits = np.where(np.tril(np.ones((5, 5), bool)), 0.7 * np.einsum("bthd,bshd->bhts", q, k), -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  expected = np.einsum("bhts,bshd->bthd", probs / probs.sum(-1, keepdims=True), v)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def _table(values):
  parts = {"graph": {"values": {"err_map": values}, "not_applicable": {}, "budget": {"steps": 1}}}
  return methods_table.build_table(parts, list(values), [0, 1, 2])


def test_noise_rule_flags_a_clear_difference_and_not_an_overlapping_one():
  table = _table({"vanilla": [1.0, 1.1, 0.9], "clear": [0.5, 0.55, 0.45], "overlapping": [1.0, 0.8, 1.2],
                  "mixed_signs": [0.7, 1.2, 0.5]})
  rows = table["studies"]["graph"]["err_map"]
  assert rows["clear"]["beyond_noise"] is True and rows["clear"]["difference"] == pytest.approx(-0.5)
  assert rows["overlapping"]["beyond_noise"] is False
  assert rows["mixed_signs"]["beyond_noise"] is False  # |difference| large enough, but one seed goes the other way
  assert "beyond_noise" not in rows["vanilla"]
  md = methods_table.markdown(table)
  assert "| clear | 0.5 ± 0.05 (lower) |" in md and "| overlapping | 1 ± 0.2 |" in md


def test_table_runs_a_study_writes_both_files_and_reuses_finished_runs(tmp_path, monkeypatch):
  monkeypatch.setattr(methods_table, "study_config", _tiny_denoise_config)
  argv = ["--variants=vanilla,gated,ssa_ws", "--seeds=0,1", f"--workdir={tmp_path}", "--studies=denoise"]
  table = methods_table.main(argv)
  rows = table["studies"]["denoise"]["risk"]
  assert rows["gated"]["n"] == 2 and rows["ssa_ws"] is None and "ssa_ws" in table["not_applicable"]["denoise"]
  assert json.loads((tmp_path / "methods_table.json").read_text())["studies"] == table["studies"]
  assert "## denoise" in (tmp_path / "methods_table.md").read_text()

  def no_training(*args):
    raise AssertionError(f"trained again: {args[1:]}")

  monkeypatch.setattr(denoise, "run_variant", no_training)
  assert methods_table.main(argv)["studies"] == table["studies"]


def _tiny_denoise_config(study, steps):
  del study, steps
  config = denoise.default_config()
  config.update(steps=2, eval_size=64, log_every=0)
  return config


@pytest.mark.parametrize("argv,message", [
    (["--variants=vanilla,nope"], "unknown variant 'nope'"),
    (["--studies=graph,plots"], "--studies: unknown ['plots']"),
])
def test_table_rejects_bad_names_before_running(argv, message, tmp_path):
  with pytest.raises(ConfigError, match=None) as info:
    methods_table.main([*argv, f"--workdir={tmp_path}"])
  assert message in str(info.value)
  assert not any(tmp_path.iterdir())


def test_table_reads_the_comparisons_report(tmp_path, monkeypatch):
  def fake_compare(command, check):
    del check
    assert "--variants=vanilla,gated" in command and "--config.train.steps=5" in command
    runs = {f"{v}_seed{s}": {"variant": v, "seed": s, "final_val_ppl": ppl, "final_step": 5}
            for (v, s), ppl in {("vanilla", 0): 50.0, ("vanilla", 1): 51.0, ("gated", 0): 40.0,
                                ("gated", 1): 40.5}.items()}
    (tmp_path / "compare").mkdir()
    (tmp_path / "compare" / "report.json").write_text(json.dumps(
        {"runs": runs, "cost": {"vanilla": {"tokens_trained": 1280}}}))
    return subprocess.CompletedProcess(command, 0)

  monkeypatch.setattr(methods_table.subprocess, "run", fake_compare)
  table = methods_table.main(["--variants=vanilla,gated", "--seeds=0,1", f"--workdir={tmp_path}", "--studies=compare",
                              "--compare_steps=5"])
  row = table["studies"]["compare"]["val_ppl"]["gated"]
  assert row["values"] == [40.0, 40.5] and row["beyond_noise"] is True
  assert table["budgets"]["compare"]["tokens_per_run"] == 1280
