"""The training run's start-up checks (ssa_jax/train/preflight.py) that need no data and no compile: the
tokenizer a run outside demo mode must name, the fields that may change on resume, the dry run's memory hint,
the runtime fields of a fine-tune's HF comparison, and the import graph of ssa_jax/train."""

import ast
import dataclasses
import importlib
import json
from pathlib import Path

import pytest

from configs import base
from ssa_jax.data import demo
from ssa_jax.errors import ConfigError
from ssa_jax.model.config import model_config_from_dict
from ssa_jax.train import preflight
from train_configs import tiny_run_config

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
  flat = preflight._flatten(base.get_config("tiny", "ssa", mode="demo").to_dict())
  for field in preflight.RESUMABLE_FIELDS:
    assert any(k == field or k.startswith(field + ".") for k in flat), field


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


# -- the first corpus: the validation split read by too many streams -------------------------------------
@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  """The demo BPE (512 tokens), in a private cache."""
  return demo.ensure_demo_tokenizer(str(tmp_path_factory.mktemp("cache")), 512)


def _six_document_corpus(root: Path) -> Path:
  """train.jsonl (20 chapters) and validation.jsonl: 6 chapters, each hundreds of tokens (many windows)."""
  chapters = demo.kjv_chapters()
  root.mkdir()
  (root / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in chapters[:20]))
  (root / "validation.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in chapters[20:26]))
  return root


def _corpus_config(corpus: Path, tokenizer: str, num_streams: int = 0):
  config = tiny_run_config(str(corpus), tokenizer, eval_every=2, eval_batches=2)  # a batch of 8 windows of 17
  config.model.vocab_size = 512
  config.mesh.update(dict(data=1, fsdp=1, tensor=1, num_devices=1))
  config.data.update(dict(demo=False, num_streams=num_streams))
  return config


def test_a_split_of_fewer_documents_than_streams_names_the_stream_count_that_reads_it(tmp_path, tokenizer_path):
  """6 validation documents, 8 streams (auto for a batch of 8): streams 6 and 7 get no document and end the
  split at once. Of the counts that divide the batch (4, 2, 1), 4 is the largest that leaves no stream empty,
  each of its streams holding at least one long document (2 windows a stream a batch)."""
  corpus = _six_document_corpus(tmp_path / "corpus")
  config = _corpus_config(corpus, tokenizer_path)
  with pytest.raises(ConfigError) as dry:
    preflight.prepare(config, None, dry_run=True)  # the dry run runs the run's check
  with pytest.raises(ConfigError) as real:
    preflight.check_validation(preflight.prepare(config, str(tmp_path / "run")))
  for error in (dry, real):
    message = str(error.value)
    assert message.startswith("config.data.num_streams: "), message
    assert "with 8 reader streams" in message and "pass --config.data.num_streams=4" in message, message
    assert "less than one batch" not in message
  preflight.check_validation(preflight.prepare(_corpus_config(corpus, tokenizer_path, num_streams=4),
                                               str(tmp_path / "run")))  # the fix it names works
  assert not (tmp_path / "run").exists()


def test_a_checkpoint_of_another_config_counts_its_fields_in_words():
  assert preflight._fields_differ(1) == "1 field differs"
  assert preflight._fields_differ(3) == "3 fields differ"
