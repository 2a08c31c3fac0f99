"""The TFDS builder writes pre-tokenized ArrayRecord windows without TensorFlow; grain reads them back."""

import importlib.util
import json

import numpy as np
import zstandard

from ssa_jax.data.demo import train_bpe
from ssa_jax.data.tfds_builder import build_tokenized, grain_dataset
from ssa_jax.data.tokenizer import load_tokenizer


def test_arrayrecord_windows_equal_the_tokenized_documents_and_no_tensorflow(tmp_path):
  texts = {split: [f"{split} document {i}: " + "the quick brown fox " * (i % 5 + 1) for i in range(n)]
           for split, n in (("train", 30), ("validation", 8))}
  for split, docs in texts.items():
    half = len(docs) // 2
    for k, part in enumerate((docs[:half], docs[half:])):
      path = tmp_path / "src" / split / "chunk1" / f"example_{split}_{k}.jsonl.zst"
      path.parent.mkdir(parents=True, exist_ok=True)
      lines = [json.dumps({"text": t, "meta": {"redpajama_set_name": "RedPajamaC4"}}) for t in part]
      if k == 0:
        lines.insert(1, "{bad json")
      path.write_bytes(zstandard.ZstdCompressor().compress("\n".join(lines).encode()))
  tok_path = tmp_path / "tok" / "tokenizer.json"
  tok_path.parent.mkdir()
  tok_path.write_text(train_bpe(texts["train"], 300))
  tok = load_tokenizer(str(tok_path))

  builder = build_tokenized(str(tmp_path / "src"), str(tok_path), seq_len=15, data_dir=str(tmp_path / "tfds"))
  assert importlib.util.find_spec("tensorflow") is None
  assert list(builder.info.splits[split].filepaths for split in ("train",))[0][0].name.count("array_record")
  for split, docs in texts.items():
    stream = [t for d in docs for t in tok.encode(d) + [tok.eos_id]]
    expected = np.asarray(stream[: len(stream) // 16 * 16], np.int32).reshape(-1, 16)
    ds = grain_dataset(builder, split)
    assert len(ds) == len(expected)
    np.testing.assert_array_equal(np.stack([ds[i]["tokens"] for i in range(len(ds))]), expected)
  batches = list(grain_dataset(builder, "train")[0::2].batch(3))
  np.testing.assert_array_equal(batches[0]["tokens"], expected_train_rows(texts, tok)[[0, 2, 4]])


def expected_train_rows(texts, tok):
  stream = [t for d in texts["train"] for t in tok.encode(d) + [tok.eos_id]]
  return np.asarray(stream[: len(stream) // 16 * 16], np.int32).reshape(-1, 16)
