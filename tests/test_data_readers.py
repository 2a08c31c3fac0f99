"""Readers: formats (jsonl.zst, parquet with struct / JSON-string meta, jsonl, WikiText .raw) and bad records."""

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from ssa_jax.data.config import data_config
from ssa_jax.data.pipeline import make_lm_iterator
from ssa_jax.data.readers import read_records
from ssa_jax.data.sources import list_files
from tests_shared import ByteTokenizer


def good(text, set_name="RedPajamaC4"):
  return json.dumps({"text": text, "meta": {"redpajama_set_name": set_name}}).encode()


def test_bad_records_are_counted_logged_once_per_kind_and_skipped(tmp_path, caplog):
  split = tmp_path / "train" / "chunk1"
  split.mkdir(parents=True)
  lines = [good("alpha one"), b"{broken", b"[1, 2]", json.dumps({"meta": {}}).encode(),
           json.dumps({"text": 5}).encode(), b'{"text": "caf\xe9"}', json.dumps({"text": "  \n"}).encode(),
           good("beta two"), b"{broken again"]
  z = zstandard.ZstdCompressor()
  (split / "a.jsonl.zst").write_bytes(z.compress(b"\n".join(lines) + b"\n"))
  rng = np.random.default_rng(0)
  whole = z.compress(b"\n".join(good(f"gamma {i} " + "".join(rng.choice(list("xyz "), 1000)))
                                for i in range(600)) + b"\n")
  (split / "b.jsonl.zst").write_bytes(whole[: len(whole) // 2])  # truncated inside the frame
  cfg = data_config()
  cfg.path, cfg.num_streams, cfg.num_threads = str(tmp_path), 1, 1
  with caplog.at_level(logging.WARNING, logger="ssa_jax.data"):
    it = make_lm_iterator(cfg, split="train", seq_len=7, global_batch_size=1, process_index=0,
                          process_count=1, tokenizer=ByteTokenizer(), repeat=False)
    text = ByteTokenizer().decode([t for b in it for t in b["tokens"][0].tolist()])
  stats = it.stats()
  assert {k: stats[f"bad_{k}"] for k in ("invalid_json", "missing_text", "non_utf8", "empty_text",
                                          "truncated_file")} == {
      "invalid_json": 3, "missing_text": 2, "non_utf8": 1, "empty_text": 1, "truncated_file": 1}
  assert stats["bad_records"] == 8
  assert "alpha one" in text and "beta two" in text and "gamma 3 " in text  # the run went on
  logged = [r.getMessage() for r in caplog.records if "skipping bad record" in r.getMessage()]
  assert sorted(m.split("(")[1].split(")")[0] for m in logged) == sorted(
      ["invalid_json", "missing_text", "non_utf8", "empty_text", "truncated_file"])


def test_truncated_zst_keeps_the_complete_lines_before_the_cut(tmp_path):
  # Random letters so the frame spans several 128 KiB zstd blocks (a cut block yields nothing).
  rng = np.random.default_rng(0)
  lines = [good(f"doc {i} " + "".join(rng.choice(list("abcdefgh "), 1000))) for i in range(600)]
  data = zstandard.ZstdCompressor().compress(b"\n".join(lines) + b"\n")
  path = tmp_path / "t.jsonl.zst"
  path.write_bytes(data[: len(data) * 2 // 3])
  records = list(read_records(str(path)))
  assert records[-1].bad == "truncated_file"
  texts = [r.text for r in records[:-1]]
  assert texts == [json.loads(l)["text"] for l in lines[: len(texts)]] and 0 < len(texts) < 600


def test_resume_skips_to_the_record(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_bytes(b"\n".join(good(f"t{i}") for i in range(10)) + b"\n")
  assert [r.text for r in read_records(str(path), start=7)] == ["t7", "t8", "t9"]
  assert [r.index for r in read_records(str(path), start=7)] == [7, 8, 9]


@pytest.mark.parametrize("meta_as_string", [False, True])
def test_parquet_meta_as_struct_or_json_string(tmp_path, meta_as_string):
  metas = [{"redpajama_set_name": n} for n in ("RedPajamaGithub", "RedPajamaBook", "RedPajamaGithub")]
  table = pa.table({"text": ["code()", "a book", ""],
                    "meta": [json.dumps(m) for m in metas] if meta_as_string else metas})
  pq.write_table(table, tmp_path / "train-00000.parquet", row_group_size=2)
  records = list(read_records(str(tmp_path / "train-00000.parquet")))
  assert [(r.text, r.set_name, r.bad) for r in records] == [
      ("code()", "RedPajamaGithub", None), ("a book", "RedPajamaBook", None), (None, "RedPajamaGithub", "empty_text")]
  assert [r.index for r in read_records(str(tmp_path / "train-00000.parquet"), start=1)] == [1, 2]


def test_wikitext_raw_is_split_into_articles_and_found_by_split_name(tmp_path):
  raw = (" \n = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 is a game . \n \n"
         " = = Gameplay = = \n \n As with previous games . \n \n = Tower Building = \n \n A tower . \n")
  (tmp_path / "wiki.train.raw").write_text(raw, encoding="utf-8")
  (tmp_path / "wiki.valid.raw").write_text(" = V = \n valid text \n", encoding="utf-8")
  assert list_files(str(tmp_path), "validation") == [str(tmp_path / "wiki.valid.raw")]
  records = list(read_records(list_files(str(tmp_path), "train")[0]))
  assert len(records) == 2
  assert records[0].text.startswith(" = Valkyria Chronicles III = \n") and "= = Gameplay = =" in records[0].text
  assert records[1].text == " = Tower Building = \n \n A tower . \n"
  assert "".join(r.text for r in records) == raw[2:]  # nothing lost but the blank line before the first title


def test_plain_text_without_headings_is_one_document_per_line(tmp_path):
  (tmp_path / "notes.txt").write_text("first line\n\nsecond line\n", encoding="utf-8")
  assert [r.text for r in read_records(str(tmp_path / "notes.txt"))] == ["first line", "second line"]


def test_missing_split_names_the_path(tmp_path):
  (tmp_path / "train").mkdir()
  (tmp_path / "train" / "a.jsonl").write_bytes(good("x") + b"\n")
  with pytest.raises(FileNotFoundError, match="config.data.path: no 'test' files"):
    list_files(str(tmp_path), "test")
  assert np.array_equal(list_files(str(tmp_path), "train"), [str(tmp_path / "train" / "a.jsonl")])


def test_gs_paths_without_the_gcs_extra_name_the_pip_command(monkeypatch):
  import importlib.util

  from ssa_jax.errors import ConfigError
  from ssa_jax.data.config import validate_data_config
  from ssa_jax.data.tokenizer import load_tokenizer
  from ssa_jax.runtime.gcs import TENSORBOARD, require_gcs

  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name.split(".")[0] in ("gcsfs", "google") else real(name, *a))
  cfg = data_config()
  cfg.path = "gs://bucket/SlimPajama-627B"
  with pytest.raises(ConfigError, match=r"config.data.path: 'gs://bucket/SlimPajama-627B' is a gs:// path, "
                                        r"which needs gcsfs .*pip install 'ssa-jax\[gcs\]'"):
    validate_data_config(cfg)
  with pytest.raises(ImportError, match=r"config.data.path.*ssa-jax\[gcs\]"):
    list_files("gs://bucket/data", "train")
  with pytest.raises(ImportError, match=r"tokenizer path.*ssa-jax\[gcs\]"):
    load_tokenizer("gs://bucket/tokenizer.json")
  with pytest.raises(ImportError, match=r"--workdir.*needs google-cloud-storage"):
    require_gcs("gs://bucket/run", "--workdir (TensorBoard)", TENSORBOARD)
  require_gcs("/local/run", "--workdir", TENSORBOARD)  # local paths need nothing


def test_a_path_at_one_split_of_a_corpus_suggests_the_corpus_root(tmp_path):
  """config.data.path=CORPUS/train finds the train files (their names say train) but no validation split: the
  error names CORPUS as the path to pass."""
  for split in ("train", "validation"):
    (tmp_path / "corpus" / split / "chunk1").mkdir(parents=True)
    (tmp_path / "corpus" / split / "chunk1" / f"example_{split}_0.jsonl").write_text('{"text": "hi"}\n')
  assert list_files(str(tmp_path / "corpus" / "train"), "train") == [
      str(tmp_path / "corpus" / "train" / "chunk1" / "example_train_0.jsonl")]
  with pytest.raises(FileNotFoundError) as e:
    list_files(str(tmp_path / "corpus" / "train"), "validation")
  assert str(e.value).endswith(f"pass the corpus root, --config.data.path={tmp_path / 'corpus'}")
  (tmp_path / "other").mkdir()
  with pytest.raises(FileNotFoundError) as e:  # a directory that is no split of a corpus: no such hint
    list_files(str(tmp_path / "other"), "validation")
  assert "corpus root" not in str(e.value)
