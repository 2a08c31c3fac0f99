"""The LM iterator on shards written here: exact token streams, exact resume, per-process sharding, mixtures."""

import collections
import json

import numpy as np
import pytest
import zstandard

from ssa_jax.data.config import data_config
from ssa_jax.data.packing import stream_files
from ssa_jax.data.pipeline import make_lm_iterator
from ssa_jax.errors import ConfigError


class ByteTokenizer:
  """An independent reference tokenizer: UTF-8 bytes, EOS 256, BOS 257 (not added by default)."""

  path, eos_id, bos_id, vocab_size, adds_bos_by_default = "bytes", 256, 257, 258, False

  def encode(self, text, add_bos=None):
    return ([self.bos_id] if add_bos else []) + list(text.encode("utf-8"))

  def encode_batch(self, texts, add_bos=None):
    return [self.encode(t, add_bos) for t in texts]

  def decode(self, ids):
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def write_zst(path, lines):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(l + b"\n" for l in lines)))


def doc_line(text, set_name="RedPajamaC4"):
  return json.dumps({"text": text, "meta": {"redpajama_set_name": set_name}}).encode()


def cfg_for(root, **kw):
  c = data_config()
  c.path = str(root)
  c.tokenizer_path = ""
  c.num_threads = 1
  c.prefetch = 2
  c.docs_per_chunk = 3
  for k, v in kw.items():
    c[k] = v
  return c


def make_iter(root, *, seq_len=15, batch=4, p=0, n=1, repeat=True, **kw):
  return make_lm_iterator(cfg_for(root, **kw), split="train", seq_len=seq_len, global_batch_size=batch,
                          process_index=p, process_count=n, tokenizer=ByteTokenizer(), repeat=repeat)


def take(it, n):
  return [next(it)["tokens"].copy() for _ in range(n)]


@pytest.fixture
def corpus(tmp_path):
  """3 files of documents of varied length, a few bad records and two set names."""
  rng = np.random.default_rng(0)
  for f in range(3):
    lines = []
    for d in range(7):
      text = f"f{f}d{d} " + "word " * int(rng.integers(1, 12))
      lines.append(doc_line(text, "RedPajamaBooks" if d % 3 == 0 else "RedPajamaC4"))
    lines.insert(2, b"{not json")
    lines.insert(4, json.dumps({"meta": {}}).encode())
    write_zst(tmp_path / "train" / "chunk1" / f"example_train_{f}.jsonl.zst", lines)
  return tmp_path


def test_single_stream_is_documents_joined_by_eos_cut_into_windows(corpus):
  tok = ByteTokenizer()
  files = sorted((corpus / "train" / "chunk1").glob("*.jsonl.zst"))
  order = stream_files(len(files), 1, seed=0, epoch=0)[0].files
  expected = []
  for i in order:
    for raw in zstandard.ZstdDecompressor().decompress(files[i].read_bytes(), max_output_size=1 << 20).splitlines():
      try:
        obj = json.loads(raw)
      except ValueError:
        continue
      if "text" in obj:
        expected += list(obj["text"].encode()) + [tok.eos_id]
  it = make_iter(corpus, seq_len=15, batch=2, num_streams=1, repeat=False)
  got = np.concatenate([b["tokens"].reshape(-1) for b in it]).tolist()
  usable = len(expected) // 16 // 2 * 2 * 16  # whole batches of two 16-token windows
  assert got == expected[:usable]
  assert it.stats()["bad_invalid_json"] == 3 and it.stats()["bad_missing_text"] == 3


def test_bos_is_added_when_the_tokenizer_adds_it(corpus):
  class BosTokenizer(ByteTokenizer):
    adds_bos_by_default = True

    def encode_batch(self, texts, add_bos=None):
      return [self.encode(t, True if add_bos is None else add_bos) for t in texts]

  it = make_lm_iterator(cfg_for(corpus, num_streams=1), split="train", seq_len=15, global_batch_size=1,
                        process_index=0, process_count=1, tokenizer=BosTokenizer())
  stream = np.concatenate([b[0] for b in take(it, 10)]).tolist()
  assert stream[0] == 257
  eos_at = [i for i, t in enumerate(stream[:-1]) if t == 256]
  assert eos_at and all(stream[i + 1] == 257 for i in eos_at)


@pytest.mark.parametrize("mixture", [{}, {"RedPajamaBooks": 2.0, "RedPajamaC4": 0.5}])
def test_resume_at_every_step_equals_the_uninterrupted_stream(corpus, mixture):
  kw = dict(seq_len=7, batch=4, num_streams=2, mixture=mixture)
  it = make_iter(corpus, **kw)
  states, batches, stats = [it.get_state()], [], [it.stats()]
  for _ in range(14):  # past one epoch: exercises the epoch change too
    batches.append(next(it)["tokens"].copy())
    states.append(json.loads(json.dumps(it.get_state())))
    stats.append(it.stats())
  it.close()
  for k in range(len(batches)):
    resumed = make_iter(corpus, **kw)
    resumed.set_state(states[k])
    assert resumed.stats() == stats[k]
    for j in range(k, len(batches)):
      np.testing.assert_array_equal(next(resumed)["tokens"], batches[j], err_msg=f"resume at {k}, step {j}")
    assert resumed.stats() == stats[-1]
    resumed.close()


def test_resuming_twice_in_a_row_continues_exactly(corpus):
  kw = dict(seq_len=5, batch=2, num_streams=2, mixture={"RedPajamaC4": 1.5})
  reference = take(make_iter(corpus, **kw), 12)
  first = make_iter(corpus, **kw)
  got = take(first, 3)
  second = make_iter(corpus, **kw)
  second.set_state(first.get_state())
  got += take(second, 4)
  third = make_iter(corpus, **kw)
  third.set_state(second.get_state())
  got += take(third, 5)
  for j, (a, b) in enumerate(zip(got, reference)):
    np.testing.assert_array_equal(a, b, err_msg=f"step {j}")


@pytest.mark.parametrize("drop", [dict(exclude=("RedPajamaBooks",)), dict(mixture={"RedPajamaBooks": 0.0})])
def test_exclude_and_zero_weight_drop_a_set(corpus, drop):
  it = make_iter(corpus, seq_len=15, batch=1, num_streams=1, repeat=False, **drop)
  text = ByteTokenizer().decode(np.concatenate([b["tokens"][0] for b in it]).tolist())
  assert "d0 " not in text and "d3 " not in text and "d1 " in text
  assert it.stats()["filtered"] > 0


MIXTURE = {"SetA": 0.7, "SetB": 0.3, "SetC": 0.0, "SetD": 2.5}  # SetE: not named, weight 1
DOCS_PER_SET = 500


@pytest.fixture
def mixture_corpus(tmp_path):
  """5 sets x DOCS_PER_SET documents spread over 4 files, each document exactly one 16-token window."""
  names = sorted(MIXTURE) + ["SetE"]
  docs = [(f"{name[-1]}{i:05d}".ljust(15, "."), name) for i in range(DOCS_PER_SET) for name in names]
  for f in range(4):
    write_zst(tmp_path / "train" / "chunk1" / f"example_train_{f}.jsonl.zst",
              [doc_line(text, name) for text, name in docs[f::4]])
  return tmp_path


def test_mixture_weights_set_each_sets_share_within_sampling_error(mixture_corpus):
  # A weight w emits each document floor(w) or ceil(w) times, ceil with probability w - floor(w): one epoch's
  # count of a set is floor(w) N + Binomial(N, w - floor(w)). Bounds: 4 binomial standard deviations.
  it = make_iter(mixture_corpus, seq_len=15, batch=1, num_streams=1, repeat=False, mixture=MIXTURE, docs_per_chunk=64)
  copies = collections.Counter(ByteTokenizer().decode(b["tokens"][0][:15].tolist()).rstrip(".") for b in it)
  by_set = collections.Counter(doc[0] for doc in copies.elements())
  for name, w in {**MIXTURE, "SetE": 1.0}.items():
    whole, frac = int(w), w - int(w)
    expected, sigma = DOCS_PER_SET * w, np.sqrt(DOCS_PER_SET * frac * (1 - frac))
    assert abs(by_set[name[-1]] - expected) <= 4 * sigma, (name, by_set[name[-1]], expected, sigma)
    emitted = [n for doc, n in copies.items() if doc[0] == name[-1]]
    assert set(emitted) <= {whole, whole + 1} - {0}, (name, collections.Counter(emitted))
  assert by_set["C"] == 0  # weight 0: never drawn
  assert by_set["E"] == DOCS_PER_SET and by_set["D"] > 2 * DOCS_PER_SET  # weight 1 keeps all; 2.5 repeats
  assert it.stats()["filtered"] == DOCS_PER_SET + (DOCS_PER_SET - by_set["A"]) + (DOCS_PER_SET - by_set["B"])


@pytest.fixture
def even_corpus(tmp_path):
  """8 files x 3 documents, each exactly one 16-token window (15 bytes + EOS), so nothing is cut off."""
  for f in range(8):
    write_zst(tmp_path / "train" / "chunk1" / f"example_train_{f}.jsonl.zst",
              [doc_line(f"file{f}doc{d}".ljust(15, ".")) for d in range(3)])
  return tmp_path


def _docs(batches):
  tok = ByteTokenizer()
  return [tok.decode(row).rstrip(".") for b in batches for row in b]


@pytest.mark.parametrize("num_processes", [2, 4])
def test_process_shards_are_disjoint_cover_everything_and_form_the_same_global_batch(even_corpus, num_processes):
  whole = list(make_iter(even_corpus, seq_len=15, batch=8, num_streams=4, repeat=False))
  shards = [list(make_iter(even_corpus, seq_len=15, batch=8, p=p, n=num_processes, num_streams=4, repeat=False))
            for p in range(num_processes)]
  per_process = [set(_docs([b["tokens"] for b in s])) for s in shards]
  assert sum(len(d) for d in per_process) == len(set().union(*per_process))  # disjoint
  assert set().union(*per_process) == {f"file{f}doc{d}" for f in range(8) for d in range(3)}  # covers all
  files_of = [{d.split("doc")[0] for d in docs} for docs in per_process]
  assert all(not (a & b) for i, a in enumerate(files_of) for b in files_of[i + 1:])  # disjoint files
  for step, batch in enumerate(whole):
    global_batch = np.concatenate([s[step]["tokens"] for s in shards])
    np.testing.assert_array_equal(global_batch, batch["tokens"])


def test_auto_streams_give_the_same_global_batch_for_1_2_4_processes(even_corpus):
  ref = take(make_iter(even_corpus, seq_len=15, batch=8), 3)
  for n in (2, 4):
    shards = [take(make_iter(even_corpus, seq_len=15, batch=8, p=p, n=n), 3) for p in range(n)]
    for step in range(3):
      np.testing.assert_array_equal(np.concatenate([s[step] for s in shards]), ref[step])


def test_state_merged_across_processes_restores_onto_one_process(even_corpus):
  kw = dict(seq_len=15, batch=8, num_streams=4)
  parts = [make_iter(even_corpus, p=p, n=2, **kw) for p in range(2)]
  for it in parts:
    take(it, 2)
  merged = parts[0].get_state()
  merged["streams"].update(parts[1].get_state()["streams"])
  single = make_iter(even_corpus, **kw)
  single.set_state(merged)
  np.testing.assert_array_equal(next(single)["tokens"], take(make_iter(even_corpus, **kw), 3)[2])


def test_invalid_layouts_and_states_fail_early(corpus):
  with pytest.raises(ConfigError, match="config.data.num_streams"):
    make_iter(corpus, batch=4, n=2, num_streams=3)
  with pytest.raises(ConfigError, match="config.data.path"):
    make_iter(corpus / "nope")
  with pytest.raises(ConfigError, match="config.data.format"):
    make_iter(corpus, format="csv")
  state = make_iter(corpus, seq_len=7).get_state()
  with pytest.raises(ValueError, match="window"):
    make_iter(corpus, seq_len=9).set_state(state)


def test_resume_where_windows_end_exactly_at_repeated_documents(even_corpus):
  # Every window is one whole document and each document is emitted twice: every saved position is
  # "copy 0 done, copy 1 next" or "record done", the cases a mid-document test never hits.
  kw = dict(seq_len=15, batch=2, num_streams=2, mixture={"RedPajamaC4": 2.0})
  reference = take(make_iter(even_corpus, **kw), 30)
  it = make_iter(even_corpus, **kw)
  for step in range(30):
    np.testing.assert_array_equal(next(it)["tokens"], reference[step], err_msg=f"step {step}")
    state = it.get_state()
    it.close()
    it = make_iter(even_corpus, **kw)
    it.set_state(state)
  docs = _docs(reference[:12])
  assert docs[0] == docs[2] and docs[1] == docs[3]  # row 0 / row 1 streams each repeat their document
