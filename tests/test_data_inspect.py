"""`python -m ssa_jax.data.inspect`: which tokenizer it uses without --tokenizer, and what it reports of bad files."""

import json

import pytest

from ssa_jax.data.config import data_config
from ssa_jax.data.corpus_scan import scan
from ssa_jax.data.inspect import report, resolve_tokenizer
from ssa_jax.runtime import cli_errors
from tests_shared import ByteTokenizer


def test_tokenizer_is_the_flag_then_the_config_then_the_one_in_path(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "train.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
  cfg = data_config()
  cfg.path, cfg.tokenizer_path = str(corpus), "/models/tok.json"
  assert resolve_tokenizer(str(corpus), "/given.json", cfg) == ("/given.json", "--tokenizer")
  assert resolve_tokenizer(str(corpus), None, cfg) == ("/models/tok.json", "config.data.tokenizer_path")
  cfg.tokenizer_path = ""
  with pytest.raises(cli_errors.UsageError) as e:  # a non-demo config naming no tokenizer, none in PATH
    resolve_tokenizer(str(corpus), None, cfg)
  assert "\n" not in str(e.value) and str(e.value).startswith(f"--tokenizer: required: {corpus} holds no ")
  assert "config.data.tokenizer_path" in str(e.value)
  (corpus / "tokenizer.json").write_text("{}")
  for path in (corpus, corpus / "train.jsonl"):  # a directory, or a file beside the tokenizer
    assert resolve_tokenizer(str(path), None, cfg) == (str(corpus / "tokenizer.json"), f"the tokenizer in {corpus}")
    assert resolve_tokenizer(str(path), None)[0] == str(corpus / "tokenizer.json")


def test_report_lists_the_files_training_skips(tmp_path):
  split = tmp_path / "train"
  split.mkdir()
  (split / "good.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
  (split / "empty.jsonl").write_text("")
  (split / "bad.jsonl").write_text("{nope\n" + json.dumps({"text": ""}) + "\n")
  r = scan(str(tmp_path), "train", ByteTokenizer())
  assert r.files_without_documents == [str(split / "bad.jsonl"), str(split / "empty.jsonl")]
  text = report(str(tmp_path), "train", r, "bytes", "--tokenizer", 400)
  assert "documents: 1\n" in text and "bad records: 2 " in text
  assert f"one warning each): 2\n  {split / 'bad.jsonl'}\n  {split / 'empty.jsonl'}\n" in text
