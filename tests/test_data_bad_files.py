"""Files without a usable document (empty, all or mostly bad records) beside good ones: skipped, never fatal.

Only a split in which no file yields a document fails, with one ConfigError line naming the files; the
pipeline and `data.inspect` agree on which files hold no usable document; resume stays exact.
"""

import json
import logging

import numpy as np
import pytest

from ssa_jax.data import packing
from ssa_jax.data.config import data_config
from ssa_jax.data.corpus_scan import scan
from ssa_jax.data.pipeline import make_lm_iterator
from ssa_jax.errors import ConfigError
from tests_shared import ByteTokenizer


def _doc(text):
  return json.dumps({"text": text, "meta": {"redpajama_set_name": "RedPajamaC4"}})


@pytest.fixture
def corpus(tmp_path):
  """train/: a.jsonl (12 good documents), b.jsonl (empty), c.jsonl (30 bad records around one good one)."""
  split = tmp_path / "train"
  split.mkdir()
  (split / "a.jsonl").write_text("".join(_doc(f"alpha {i} " + "x" * (i % 7)) + "\n" for i in range(12)))
  (split / "b.jsonl").write_text("")
  bad = ["{broken", json.dumps({"meta": {}}), json.dumps({"text": "  "})] * 10
  (split / "c.jsonl").write_text("\n".join(bad[:15] + [_doc("the one good record of c")] + bad[15:]) + "\n")
  packing._EMPTY_FILES_WARNED.clear()  # pylint: disable=protected-access  (one warning per file and process)
  return tmp_path


def _iter(root, *, batch=8, streams=0, **kw):
  cfg = data_config()
  cfg.path, cfg.num_threads, cfg.docs_per_chunk, cfg.num_streams = str(root), 1, 2, streams
  for k, v in kw.items():
    cfg[k] = v
  return make_lm_iterator(cfg, split="train", seq_len=15, global_batch_size=batch, process_index=0,
                          process_count=1, tokenizer=ByteTokenizer())


@pytest.mark.parametrize("streams", [0, 2])  # 8 streams sharing the 3 files in parts; 2 streams reading files whole
def test_a_file_without_usable_documents_is_skipped_with_one_warning(corpus, caplog, streams):
  with caplog.at_level(logging.WARNING, logger="ssa_jax.data"):
    it = _iter(corpus, streams=streams)
    rows = [ByteTokenizer().decode(row.tolist()) for _ in range(40) for row in next(it)["tokens"]]
    stats = it.stats()
    it.close()
  # The run went on over both usable files (a row is 16 tokens, so look for pieces of their texts).
  assert any("alpha" in r for r in rows) and any("good rec" in r for r in rows)
  empty = [r.getMessage() for r in caplog.records if "no usable document in it" in r.getMessage()]
  assert len(empty) == 1 and str(corpus / "train" / "b.jsonl") in empty[0]
  assert stats["empty_files"] >= 1 and stats["bad_records"] >= 30 and stats["documents"] > 0
  # What inspect reports agrees: b holds no usable document, c holds one.
  assert scan(str(corpus), "train", ByteTokenizer()).files_without_documents == [str(corpus / "train" / "b.jsonl")]


def test_resume_inside_a_fallback_read_is_exact(corpus):
  """A stream whose part of a file is empty reads the epoch's other files whole; a state taken there resumes."""
  it = _iter(corpus)
  for _ in range(7):
    next(it)
  state = it.get_state()
  assert any(s["file_pos"] >= 1 for s in state["streams"].values())  # some stream is in its fallback reads
  expected = [next(it)["tokens"].copy() for _ in range(6)]
  it.close()
  again = _iter(corpus)
  again.set_state(state)
  got = [next(again)["tokens"].copy() for _ in range(6)]
  again.close()
  np.testing.assert_array_equal(np.stack(got), np.stack(expected))


def _all_bad(root):
  (root / "train").mkdir()
  (root / "train" / "empty.jsonl").write_text("")
  (root / "train" / "bad.jsonl").write_text("{broken\n" + json.dumps({"text": 3}) + "\n")
  return sorted(str(p) for p in (root / "train").iterdir())


def test_no_usable_document_anywhere_is_one_line_naming_the_files_when_the_iterator_is_made(tmp_path):
  _all_bad(tmp_path)
  with pytest.raises(ConfigError) as e:
    _iter(tmp_path, batch=4)
  message = str(e.value)
  assert "\n" not in message and message.startswith("config.data.path: none of the 2 file(s)")
  assert "empty.jsonl" in message and "bad.jsonl" in message


def test_a_stream_that_finds_no_document_anywhere_fails_the_same_way(tmp_path):
  """The streams' own rule (behind the early check): their share, then every other file, then the error."""
  files = _all_bad(tmp_path)
  stream = packing.Stream(stream_id=1, files=files, fmt="auto", num_streams=3, seed=0, tokenizer=ByteTokenizer(),
                          window=8, mixture={}, exclude=(), docs_per_chunk=2, executor=_Inline(), repeat=True)
  with pytest.raises(ConfigError, match=r"^config.data.path: none of the 2 file\(s\) .*bad.jsonl, .*empty.jsonl"):
    stream.next_window()


class _Inline:
  """An executor that runs the submitted call at once (a stream without threads)."""

  def submit(self, fn, *args):
    import concurrent.futures

    future = concurrent.futures.Future()
    try:
      future.set_result(fn(*args))
    except Exception as e:  # pylint: disable=broad-except
      future.set_exception(e)
    return future


def test_every_document_excluded_names_the_mixture_fields(corpus):
  with pytest.raises(ConfigError, match=r"config.data.exclude / config.data.mixture: .*a.jsonl"):
    _iter(corpus, batch=4, exclude=("RedPajamaC4",))
