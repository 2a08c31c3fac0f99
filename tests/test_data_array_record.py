"""config.data.format='array_record': grain batches of the tfds builder's windows; exact resume, P-independent."""

import json

import numpy as np
import pytest
import zstandard

from ssa_jax.data.config import data_config
from ssa_jax.data.demo import train_bpe
from ssa_jax.data.pipeline import make_lm_iterator
from ssa_jax.data.tfds_builder import build_tokenized
from ssa_jax.data.tokenizer import load_tokenizer
from ssa_jax.errors import ConfigError

SEQ_LEN = 15


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """A prepared dataset of 16-token windows (train ~150, validation ~20) and the reference windows."""
  root = tmp_path_factory.mktemp("array_record")
  texts = {split: [f"{split} {i}: " + "the quick brown fox jumps " * (i % 4 + 1) for i in range(n)]
           for split, n in (("train", 90), ("validation", 12))}
  for split, docs in texts.items():
    path = root / "src" / split / "chunk1" / f"example_{split}_0.jsonl.zst"
    path.parent.mkdir(parents=True)
    lines = [json.dumps({"text": t, "meta": {"redpajama_set_name": "RedPajamaC4"}}) for t in docs]
    path.write_bytes(zstandard.ZstdCompressor().compress("\n".join(lines).encode()))
  tok_path = root / "tok" / "tokenizer.json"
  tok_path.parent.mkdir()
  tok_path.write_text(train_bpe(texts["train"], 300))
  builder = build_tokenized(str(root / "src"), str(tok_path), seq_len=SEQ_LEN, data_dir=str(root / "tfds"))
  tok = load_tokenizer(str(tok_path))
  windows = {}
  for split, docs in texts.items():  # the reference: documents joined by EOS, cut into windows
    stream = [t for d in docs for t in tok.encode(d) + [tok.eos_id]]
    whole = len(stream) // (SEQ_LEN + 1) * (SEQ_LEN + 1)
    windows[split] = np.asarray(stream[:whole], np.int32).reshape(-1, SEQ_LEN + 1)
  return str(builder.data_dir), windows


def make(path, *, split="train", p=0, n=1, batch=8, repeat=True, max_batches=None, **kw):
  cfg = data_config()
  cfg.path, cfg.format, cfg.num_threads, cfg.prefetch = path, "array_record", 2, 2
  for k, v in kw.items():
    cfg[k] = v
  return make_lm_iterator(cfg, split=split, seq_len=SEQ_LEN, global_batch_size=batch, process_index=p,
                          process_count=n, repeat=repeat, max_batches=max_batches)


def take(it, k):
  return [next(it)["tokens"].copy() for _ in range(k)]


def test_validation_is_the_windows_in_order_in_whole_global_batches_on_every_process(dataset):
  path, windows = dataset
  expected = windows["validation"][: len(windows["validation"]) // 4 * 4].reshape(-1, 4, SEQ_LEN + 1)
  assert len(expected) >= 2
  parts = [list(make(path, split="validation", p=p, n=2, batch=4, repeat=False)) for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == len(expected)
  for step, batch in enumerate(expected):
    np.testing.assert_array_equal(np.concatenate([parts[0][step]["tokens"], parts[1][step]["tokens"]]), batch)


def test_training_batches_are_a_per_epoch_shuffle_and_the_same_global_batch_for_1_and_2_processes(dataset):
  path, windows = dataset
  n = len(windows["train"])
  one = take(make(path), 2 * n // 8 + 2)  # past two epochs
  rows = np.concatenate(one)
  first_epoch = {r.tobytes() for r in rows[:n]}
  assert first_epoch == {w.tobytes() for w in windows["train"]}  # every window once per epoch
  assert not np.array_equal(rows[:n], windows["train"]) and not np.array_equal(rows[:n], rows[n:2 * n])
  two = [take(make(path, p=p, n=2), len(one)) for p in range(2)]
  for step, batch in enumerate(one):
    np.testing.assert_array_equal(np.concatenate([two[0][step], two[1][step]]), batch, err_msg=f"step {step}")
  other_seed = take(make(path, seed=1), 1)[0]
  assert not np.array_equal(other_seed, one[0])


def test_resume_from_a_saved_state_equals_the_uninterrupted_iterator_for_any_process_count(dataset):
  path, _ = dataset
  reference = take(make(path), 30)
  first = make(path, p=1, n=2)
  take(first, 11)
  state = json.loads(json.dumps(first.get_state()))  # what the checkpoint stores
  assert state["grain"] and first.stats() == {"windows": 11 * 4, "tokens": 11 * 4 * (SEQ_LEN + 1)}
  first.close()
  resumed = make(path)  # one process now: the saved state holds a global position
  resumed.set_state(state)
  np.testing.assert_array_equal(np.concatenate(take(resumed, 19)), np.concatenate(reference[11:]))
  assert resumed.stats()["windows"] == 30 * 8
  for p in range(2):  # and back onto two processes
    again = make(path, p=p, n=2)
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["tokens"], reference[11][p * 4:(p + 1) * 4])


def test_bad_array_record_configs_name_the_field(dataset, tmp_path):
  path, _ = dataset
  with pytest.raises(ConfigError, match="config.train.seq_len"):
    make_lm_iterator(_cfg(path), split="train", seq_len=31, global_batch_size=8,
                     process_index=0, process_count=1)
  with pytest.raises(ConfigError, match="config.data.path.*dataset_info.json"):
    make(str(tmp_path))
  with pytest.raises(ConfigError, match="has no split 'test'"):
    make(path, split="test")
  with pytest.raises(ValueError, match="global_batch_size"):
    make(path, batch=16).set_state(make(path).get_state())


def _cfg(path):
  cfg = data_config()
  cfg.path, cfg.format = path, "array_record"
  return cfg
