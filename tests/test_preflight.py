"""The training run's start-up checks (ssa_jax/train/preflight.py) that need no data and no compile: the
tokenizer a run outside demo mode must name, the fields that may change on resume, the dry run's memory hint,
the runtime fields of a fine-tune's HF comparison, and the import graph of ssa_jax/train."""

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest

from ssa_jax.errors import ConfigError
from ssa_jax.model.config import model_config_from_dict
from ssa_jax.train import preflight

REPO = Path(__file__).resolve().parents[1]


def _pretrain_config():
  config = importlib.import_module("configs.pythia160m_ssa").get_config()
  config.mesh.update(dict(data=-1, fsdp=1, tensor=1, num_devices=1))
  return config


def test_a_named_corpus_without_its_tokenizer_is_refused_in_a_real_run_and_a_dry_run(tmp_path):
  config = _pretrain_config()
  config.data.path = str(tmp_path)
  for dry_run in (False, True):
    with pytest.raises(ConfigError, match=r"^config\.data\.tokenizer_path: required outside demo mode"):
      preflight.check_config(config, str(tmp_path / "run"), dry_run=dry_run)
  assert not (tmp_path / "run").exists()


def test_a_dry_run_without_a_corpus_lists_the_tokenizer_as_unchecked():
  """A shape-only dry run of a shipped pre-training config: no config_ok with nothing unchecked."""
  run = preflight.check_config(_pretrain_config(), None, dry_run=True)
  assert any(u.startswith("config.data.path: required") for u in run.unchecked), run.unchecked
  assert any(u.startswith("config.data.tokenizer_path: required") for u in run.unchecked), run.unchecked
  assert run.tokenizer_checked is False


def test_the_demo_needs_no_tokenizer_path():
  config = importlib.import_module("configs.tiny_ssa").get_config()
  config.mesh.num_devices = 1
  run = preflight.check_config(config, None, dry_run=True)
  assert run.unchecked == [] and run.tokenizer_checked


def test_config_differences_ignore_the_fields_that_may_change_on_resume():
  saved = {"train": {"steps": 100, "lr": 3e-3, "eval_every": 10}, "model": {"d_model": 32, "remat": "none"},
           "mesh": {"data": 8}, "data": {"path": "/a", "tokenizer_path": "/t/a.json"}, "eval": {"tasks": ""},
           "gone": 1}
  wanted = {"train": {"steps": 200, "lr": 3e-3, "eval_every": 50}, "model": {"d_model": 32, "remat": "full"},
            "mesh": {"data": 1}, "data": {"path": "/b", "tokenizer_path": "/t/a.json"}, "eval": {"tasks": "piqa"},
            "new": 2}
  assert preflight.config_differences(saved, wanted) == []
  wanted["model"]["d_model"], wanted["data"]["tokenizer_path"], wanted["train"]["lr"] = 64, "/t/b.json", 1e-3
  assert preflight.config_differences(saved, wanted) == [
      ("data.tokenizer_path", "/t/a.json", "/t/b.json"), ("model.d_model", 32, 64), ("train.lr", 3e-3, 1e-3)]


def test_every_resumable_field_exists_in_the_base_config():
  from configs import base

  flat = preflight._flatten(base.get_config("tiny", "ssa", mode="demo").to_dict())
  for field in preflight.RESUMABLE_FIELDS:
    assert any(k == field or k.startswith(field + ".") for k in flat), field


def test_the_dry_run_hints_at_target_when_no_device_could_hold_the_step():
  assert preflight.dry_run_memory_hint(2.46e12, None) is not None
  assert "--dry_run --target=" in preflight.dry_run_memory_hint(2.46e12, None)
  assert "config.mesh.fsdp" in preflight.dry_run_memory_hint(2.46e12, "v5p-8")
  assert preflight.dry_run_memory_hint(40e9, None) is None
  assert preflight.dry_run_memory_hint(None, None) is None


def test_splash_block_sizes_are_not_architecture():
  cfg = model_config_from_dict(importlib.import_module("configs.pythia160m_ssa").get_config().model)
  other = dataclasses.replace(cfg, splash_block_q=256, splash_block_kv=1024, attention_impl="xla")
  preflight.check_against_hf(other, cfg, "/hf")  # no error
  with pytest.raises(ConfigError, match="num_layers"):
    preflight.check_against_hf(dataclasses.replace(cfg, num_layers=3), cfg, "/hf")


def _imports(path: Path) -> set[str]:
  """Every ssa_jax module `path` imports, at the top or inside a function."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ssa_jax"):
      out.add(node.module)
      out.update(f"{node.module}.{a.name}" for a in node.names)
    elif isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("ssa_jax"))
  return out


def test_the_training_modules_import_no_circle():
  """No module of ssa_jax/train reaches itself through the imports of the others (lazy ones included)."""
  modules = {f"ssa_jax.train.{p.stem}": _imports(p) for p in (REPO / "ssa_jax" / "train").glob("*.py")}
  edges = {m: {d for d in deps if d in modules and d != m} for m, deps in modules.items()}

  def reaches(start, goal, seen):
    return any(d == goal or (d not in seen and not seen.add(d) and reaches(d, goal, seen)) for d in edges[start])

  assert [m for m in edges if reaches(m, m, set())] == []
  assert "ssa_jax.train.loop" not in modules["ssa_jax.train.final_eval"]
  assert "ssa_jax.train.loop" not in modules["ssa_jax.train.preflight"]
