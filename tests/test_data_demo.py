"""Demo corpus (KJV in SlimPajama layout), demo BPE, token counts / feature, the CLIs and config checks."""

import json
from pathlib import Path
import subprocess
import sys
import threading

import numpy as np
import pytest
import zstandard

from ssa_jax.data import demo
from ssa_jax.data.config import data_config, validate_data_config
from ssa_jax.data.pipeline import make_lm_iterator
from ssa_jax.data.token_counts import count_tokens, load_token_feature
from ssa_jax.data.tokenizer import load_tokenizer
from ssa_jax.errors import ConfigError


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


def test_demo_corpus_is_the_whole_bible_in_slimpajama_layout_written_once_race_safe(cache):
  roots = []
  threads = [threading.Thread(target=lambda: roots.append(demo.ensure_demo_corpus(str(cache)))) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  root = roots[0]
  assert roots == [root, root]
  files = sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*.jsonl.zst"))
  assert files == [f"test/chunk1/example_test_0.jsonl.zst"] + [
      f"train/chunk1/example_train_{k}.jsonl.zst" for k in range(8)] + ["validation/chunk1/example_validation_0.jsonl.zst"]
  docs = []
  for f in files:
    raw = zstandard.ZstdDecompressor().decompress((Path(root) / f).read_bytes(),
                                                   max_output_size=1 << 24)
    docs += [json.loads(l) for l in raw.decode().splitlines()]
  assert len(docs) == 1189  # chapters of the KJV
  assert {d["meta"]["redpajama_set_name"] for d in docs} == {"RedPajamaBooks"}
  texts = {d["text"].split("\n")[0]: d["text"] for d in docs}
  assert texts["Genesis 1"].split("\n\n", 1)[1].startswith("In the beginning God created the heaven and the earth.")
  assert texts["John 11"].rstrip().endswith("that they might take him.")
  assert "Jesus wept." in texts["John 11"]
  mtime = (Path(root) / files[1]).stat().st_mtime_ns
  demo.ensure_demo_corpus(str(cache))
  assert (Path(root) / files[1]).stat().st_mtime_ns == mtime  # not rewritten


def test_demo_bpe_is_deterministic_and_round_trips(cache):
  texts = demo.kjv_chapters()[:40]
  assert demo.train_bpe(texts, 400) == demo.train_bpe(texts, 400)
  tok = load_tokenizer(demo.ensure_demo_tokenizer(str(cache), 512))
  assert tok.vocab_size == 512 and tok.eos_id == 0 and not tok.adds_bos_by_default
  text = "And God said, Let there be light: and there was light."
  assert tok.decode(tok.encode(text)) == text and len(tok.encode(text)) < len(text) / 2


def test_default_config_streams_the_demo_corpus(cache):
  cfg = data_config()
  cfg.cache_dir, cfg.demo_vocab_size, cfg.num_threads = str(cache), 512, 1
  it = make_lm_iterator(cfg, split="train", seq_len=32, global_batch_size=8, process_index=0, process_count=1)
  batch = next(it)["tokens"]
  assert batch.shape == (8, 33) and batch.dtype == np.int32 and batch.max() < 512
  tok = load_tokenizer(demo.ensure_demo_tokenizer(str(cache), 512))
  chapters = "\n".join(demo.kjv_chapters())
  for row in batch:  # every row is KJV text, documents joined by EOS
    pieces = tok.decode(row).split(demo.EOS_TOKEN)
    assert all(piece in chapters for piece in pieces)


def test_token_counts_and_standardized_log_frequency(tmp_path, cache):
  root = demo.ensure_demo_corpus(str(cache))
  tok_path = demo.ensure_demo_tokenizer(str(cache), 512)
  out = tmp_path / "counts.npy"
  subprocess.run([sys.executable, "-m", "ssa_jax.data.token_counts", root, f"--tokenizer={tok_path}",
                  "--split=validation", f"--output={out}"], check=True, capture_output=True)
  counts = np.load(out)
  tok = load_tokenizer(tok_path)
  assert counts.dtype == np.int64 and counts.shape == (512,)
  assert counts[tok.eos_id] == 24  # one EOS per validation chapter
  np.testing.assert_array_equal(counts, count_tokens(root, "validation", tok))
  feature = load_token_feature(str(out), 600)  # padded vocab: ids 512.. never occur
  logs = [np.log1p(float(c)) for c in list(counts) + [0] * 88]
  mean = sum(logs) / len(logs)
  std = (sum((x - mean) ** 2 for x in logs) / len(logs)) ** 0.5
  np.testing.assert_allclose(feature, [(x - mean) / std for x in logs], rtol=1e-5, atol=1e-6)
  assert feature.dtype == np.float32 and feature.shape == (600,)
  with pytest.raises(ValueError, match="vocab_size"):
    load_token_feature(str(out), 100)


def test_inspect_cli_reports_documents_tokens_and_sets(cache):
  """With --config and no PATH / --tokenizer: the corpus and the tokenizer that config's run would read."""
  root = demo.ensure_demo_corpus(str(cache))
  tok_path = demo.ensure_demo_tokenizer(str(cache), 512)
  out = subprocess.run([sys.executable, "-m", "ssa_jax.data.inspect", "--config=configs/tiny.py",
                        f"--config.data.cache_dir={cache}", "--config.data.demo_vocab_size=512", "--split=test"],
                       check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]).stdout
  tok = load_tokenizer(tok_path)
  n_tokens = sum(len(tok.encode(t)) + 1 for i, t in enumerate(demo.kjv_chapters()) if i % 50 == 32)
  assert f"path: {root} " in out and f"tokenizer: {tok_path} (the demo BPE of the config)" in out
  assert "documents: 24" in out and f"tokens: {n_tokens} " in out and "RedPajamaBooks" in out
  assert "bad records: 0" in out and "files without a usable document (training skips them, one warning each): 0" in out


def test_config_errors_name_the_field(tmp_path):
  cfg = data_config()
  cfg.path = str(tmp_path / "missing")
  with pytest.raises(ConfigError, match=r"config.data.path: .* does not exist"):
    validate_data_config(cfg)
  cfg = data_config()
  cfg.mixture = {"RedPajamaGithub": -1.0}
  with pytest.raises(ConfigError, match="config.data.mixture.RedPajamaGithub"):
    validate_data_config(cfg)
  cfg = data_config()
  cfg.num_threads = 0
  with pytest.raises(ConfigError, match="config.data.num_threads"):
    validate_data_config(cfg)
