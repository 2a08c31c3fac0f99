"""Equal work on every process: validation batch counts, files shared by streams read in parts, summed counters.

Processes are simulated: one Python process builds the iterator of each process_index in turn.
"""

import json
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from ssa_jax.data import demo
from ssa_jax.data.config import data_config
from ssa_jax.data.pipeline import make_lm_iterator, sum_over_processes
from ssa_jax.data.readers import read_records
from ssa_jax.data.tokenizer import load_tokenizer
from tests_shared import ByteTokenizer


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("cache"))
  cfg = data_config()
  cfg.cache_dir = cfg.path = demo.ensure_demo_corpus(cache)
  cfg.tokenizer_path = demo.ensure_demo_tokenizer(cache, cfg.demo_vocab_size)
  cfg.num_threads = 2
  return cfg, load_tokenizer(cfg.tokenizer_path)


def _validation(cfg, tok, p, n, max_batches=None):
  it = make_lm_iterator(cfg, split="validation", seq_len=128, global_batch_size=8, process_index=p,
                        process_count=n, tokenizer=tok, repeat=False, max_batches=max_batches)
  batches = [b["tokens"].copy() for b in it]
  it.close()
  return it, batches


def test_every_process_runs_the_same_validation_batches_as_one_process(demo_data):
  cfg, tok = demo_data
  _, single = _validation(cfg, tok, 0, 1)
  parts = [_validation(cfg, tok, p, 2)[1] for p in range(2)]
  # One file, 8 streams: before, process 0 stopped at its streams' end (16) and process 1 at 19.
  assert len(parts[0]) == len(parts[1]) == len(single) > 0
  for step, batch in enumerate(single):
    np.testing.assert_array_equal(np.concatenate([parts[0][step], parts[1][step]]), batch)
  it, bounded = _validation(cfg, tok, 1, 2, max_batches=5)
  assert len(bounded) == it.num_batches == 5
  np.testing.assert_array_equal(np.stack(bounded), np.stack(parts[1][:5]))


DOCS = [f"doc{i:03d} " + "abc " * (i % 7 + 1) for i in range(60)]


def _write(path, fmt):
  path.parent.mkdir(parents=True, exist_ok=True)
  if fmt == "jsonl":
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
  elif fmt == "jsonl_zst":
    lines = "".join(json.dumps({"text": d}) + "\n" for d in DOCS)
    path.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
  elif fmt == "text_articles":
    path.write_text("".join(f" = {d.split()[0]} = \n\n {d}\n = = sub = = \n more {i}\n" for i, d in enumerate(DOCS)))
  elif fmt == "text_lines":
    path.write_text("\n".join(DOCS) + "\n\n")
  else:
    pq.write_table(pa.table({"text": DOCS}), path, row_group_size=7)


_NAMES = {"jsonl": "a.train.jsonl", "jsonl_zst": "a.train.jsonl.zst", "text_articles": "wiki.train.raw",
          "text_lines": "a.train.txt", "parquet": "a.train.parquet"}


@pytest.mark.parametrize("fmt", sorted(_NAMES))
def test_parts_of_a_file_are_disjoint_cover_it_and_resume_exactly(tmp_path, fmt):
  path = str(tmp_path / _NAMES[fmt])
  _write(tmp_path / _NAMES[fmt], fmt)
  whole = [r.text for r in read_records(path)]
  assert len(whole) == len(DOCS)
  for count in (2, 3, 7):
    parts = [list(read_records(path, part=(rank, count))) for rank in range(count)]
    if fmt == "jsonl_zst":  # every count-th line (zstd has no random access)
      assert [[r.text for r in p] for p in parts] == [whole[rank::count] for rank in range(count)]
    else:  # contiguous ranges, in order
      assert [r.text for p in parts for r in p] == whole
    for rank, part in enumerate(parts):
      for k in range(len(part)):  # resuming at a record, or just after it, continues exactly
        assert [r.text for r in read_records(path, start=part[k].index, part=(rank, count))] == \
            [r.text for r in part[k:]]
        assert [r.text for r in read_records(path, start=part[k].index + 1, part=(rank, count))] == \
            [r.text for r in part[k + 1:]]
  if fmt in ("jsonl", "text_lines", "text_articles"):  # byte ranges: a part starts reading at its range
    size = (tmp_path / _NAMES[fmt]).stat().st_size
    assert list(read_records(path, part=(2, 3)))[0].index >= size * 2 // 3


def test_zst_parts_parse_only_their_lines(tmp_path, monkeypatch):
  path = tmp_path / "a.train.jsonl.zst"
  _write(path, "jsonl_zst")
  from ssa_jax.data import readers

  parsed = []
  real = readers._json_record
  monkeypatch.setattr(readers, "_json_record", lambda i, raw: parsed.append(i) or real(i, raw))
  got = [r.text for r in read_records(str(path), part=(1, 3))]
  assert got == DOCS[1::3] and parsed == list(range(1, len(DOCS), 3))


def test_streams_sharing_one_file_make_the_same_global_batch_for_1_and_2_processes(tmp_path):
  _write(tmp_path / "train" / "a.jsonl", "jsonl")
  cfg = data_config()
  cfg.path, cfg.num_streams, cfg.num_threads, cfg.docs_per_chunk = str(tmp_path), 4, 1, 4

  def it(p, n, repeat):
    return make_lm_iterator(cfg, split="train", seq_len=15, global_batch_size=8, process_index=p, process_count=n,
                            tokenizer=ByteTokenizer(), repeat=repeat)

  one = list(it(0, 1, False))
  two = [list(it(p, 2, False)) for p in range(2)]
  assert len(one) == len(two[0]) == len(two[1]) > 2
  for step in range(len(one)):
    np.testing.assert_array_equal(np.concatenate([two[0][step]["tokens"], two[1][step]["tokens"]]),
                                  one[step]["tokens"])
  # Rows 2s, 2s + 1 are stream s's: the four streams start at the first record of their quarter of the file.
  starts = [ByteTokenizer().decode(one[0]["tokens"][2 * s].tolist())[:6] for s in range(4)]
  assert starts[0] == "doc000" and all(a.startswith("doc") for a in starts) and starts == sorted(set(starts))
  assert int(starts[3][3:]) > 40
  # Exact resume across the shared file's byte ranges, past an epoch boundary.
  ref = it(0, 1, True)
  reference = [next(ref)["tokens"].copy() for _ in range(12)]
  first = it(0, 1, True)
  for _ in range(5):
    next(first)
  second = it(0, 1, True)
  second.set_state(json.loads(json.dumps(first.get_state())))
  for step in range(5, 12):
    np.testing.assert_array_equal(next(second)["tokens"], reference[step])


def test_counters_are_summed_over_processes_past_2_to_the_31():
  per_process = [{"tokens": 3_000_000_000, "bad_records": 1}, {"tokens": 5_000_000_123, "bad_records": 2}]
  sent, barrier = [None, None], threading.Barrier(2)

  def allgather_of(p):  # two threads stand in for two processes; gathers what each one sent
    def allgather(x):
      assert x.dtype == np.int32  # what jax's 32-bit default carries
      sent[p] = x
      barrier.wait()
      return np.stack(sent)
    return allgather

  results = [None, None]
  threads = [threading.Thread(target=lambda p=p: results.__setitem__(p, sum_over_processes(per_process[p],
                                                                                          allgather_of(p))))
             for p in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert results[0] == results[1] == {"tokens": 8_000_000_123, "bad_records": 3}
  assert sum_over_processes({"tokens": 7}) == {"tokens": 7}  # one process: no collective


def test_parquet_parts_read_only_the_row_groups_of_their_rows(tmp_path, monkeypatch):
  path = tmp_path / "a.train.parquet"
  _write(path, "parquet")  # 60 rows in row groups of 7
  groups = []
  real = pq.ParquetFile.read_row_group
  monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, g, **kw: groups.append(g) or real(self, g, **kw))
  got = [r.text for r in read_records(str(path), part=(2, 3))]
  assert got == DOCS[40:] and groups == [5, 6, 7, 8]  # rows 35-62: the groups holding rows 40-59
