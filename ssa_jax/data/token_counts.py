"""Token frequencies for SSA's feature-based temperature: counts file writer and the standardized feature.

`python -m ssa_jax.data.token_counts PATH --tokenizer=... --output=FILE.npy` writes a NumPy .npy of
int64 counts, shape [tokenizer.vocab_size], over the split's documents tokenized as the pipeline does
(BOS per tokenizer, one EOS per document). `load_token_feature` turns it into phi(token).
"""

from __future__ import annotations

import numpy as np
from absl import app, flags
from etils import epath

from ssa_jax.data.corpus_scan import scan
from ssa_jax.data.tokenizer import load_tokenizer


def count_tokens(path: str, split: str, tokenizer, *, fmt: str = "auto", max_docs: int = 0) -> np.ndarray:
  """int64 [vocab_size] occurrence counts of every token id over the split's documents."""
  counts = np.zeros(tokenizer.vocab_size, np.int64)

  def add(ids):
    np.add.at(counts, np.asarray(ids, np.int64), 1)

  scan(path, split, tokenizer, fmt=fmt, max_docs=max_docs, on_tokens=add)
  return counts


def load_token_feature(counts_path: str, vocab_size: int) -> np.ndarray:
  """float32 [vocab_size]: log(count + 1) standardized to zero mean, unit std (padded ids count 0)."""
  with epath.Path(counts_path).open("rb") as f:
    counts = np.load(f)
  if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
    raise ValueError(f"token counts {counts_path}: expected a 1-D array of non-negative integer counts, "
                     f"got {counts.dtype} {counts.shape}")
  if counts.shape[0] > vocab_size:
    raise ValueError(f"token counts {counts_path}: {counts.shape[0]} entries but the model's vocab_size is "
                     f"{vocab_size}")
  # Embedding tables are often padded past the tokenizer (Pythia: 50277 -> 50304); padded ids never occur.
  counts = np.pad(counts, (0, vocab_size - counts.shape[0]))
  feature = np.log(counts.astype(np.float64) + 1.0)
  std = feature.std()
  if std == 0:
    raise ValueError(f"token counts {counts_path}: all counts are equal, the feature would be constant")
  return ((feature - feature.mean()) / std).astype(np.float32)


_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer.json / SentencePiece .model / dir holding one.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the .npy of int64 counts [vocab_size].")
_SPLIT = flags.DEFINE_string("split", "train", "Split to count (ignored when PATH is a file).")
_FORMAT = flags.DEFINE_string("format", "auto", "Reader format (auto picks by extension).")
_MAX_DOCS = flags.DEFINE_integer("max_docs", 0, "Stop after this many documents (0 = all).")


def main(argv):
  if len(argv) != 2 or not _TOKENIZER.value or not _OUTPUT.value:
    raise app.UsageError("usage: python -m ssa_jax.data.token_counts PATH --tokenizer=PATH --output=FILE.npy")
  tok = load_tokenizer(_TOKENIZER.value)
  counts = count_tokens(argv[1], _SPLIT.value, tok, fmt=_FORMAT.value, max_docs=_MAX_DOCS.value)
  out = epath.Path(_OUTPUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  with out.open("wb") as f:
    np.save(f, counts)
  print(f"wrote {out}: {counts.sum()} tokens, {(counts > 0).sum()} of {counts.shape[0]} ids seen")


if __name__ == "__main__":
  app.run(main)
