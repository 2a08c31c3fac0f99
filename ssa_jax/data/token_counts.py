"""Token frequencies for SSA's feature-based temperature: counts file writer and the standardized feature.

`python -m ssa_jax.data.token_counts PATH --output=FILE.npy [--tokenizer=...]` writes a NumPy .npy of
int64 counts, shape [tokenizer.vocab_size], over the split's documents tokenized as the pipeline does
(BOS per tokenizer, one EOS per document). `load_token_feature` turns it into phi(token).
"""

from __future__ import annotations

import numpy as np
from absl import flags
from etils import epath

from ssa_jax.data.corpus_scan import ScanResult, documents
from ssa_jax.data.inspect import resolve_tokenizer
from ssa_jax.data.tokenizer import load_tokenizer
from ssa_jax.runtime import cli_errors


def count_tokens(path: str, split: str, tokenizer, *, fmt: str = "auto", max_docs: int = 0) -> np.ndarray:
  """int64 [vocab_size] occurrence counts of every token id over the split's documents."""
  counts = np.zeros(tokenizer.vocab_size, np.int64)
  for _, _, ids in documents(path, split, tokenizer, ScanResult(), fmt=fmt, max_docs=max_docs):
    np.add.at(counts, np.asarray(ids, np.int64), 1)
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


def define_flags() -> None:
  """The command's flags, defined only when it runs (eval.py and data.inspect define --tokenizer too)."""
  flags.DEFINE_string("tokenizer", None, "tokenizer.json / SentencePiece .model / dir holding one (default: the "
                      "one in PATH).")
  flags.DEFINE_string("output", None, "Where to write the .npy of int64 counts [vocab_size].")
  flags.DEFINE_string("split", "train", "Split to count (ignored when PATH is a file).")
  flags.DEFINE_string("format", "auto", "Reader format (auto picks by extension).")
  flags.DEFINE_integer("max_docs", 0, "Stop after this many documents (0 = all).")


def main(argv):
  f = flags.FLAGS
  if len(argv) != 2 or not f.output:
    raise cli_errors.UsageError("usage: python -m ssa_jax.data.token_counts PATH --output=FILE.npy "
                                "[--tokenizer=PATH]")
  tok = load_tokenizer(resolve_tokenizer(argv[1], f.tokenizer)[0])
  counts = count_tokens(argv[1], f.split, tok, fmt=f.format, max_docs=f.max_docs)
  out = epath.Path(f.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  with out.open("wb") as fh:
    np.save(fh, counts)
  print(f"wrote {out}: {counts.sum()} tokens, {(counts > 0).sum()} of {counts.shape[0]} ids seen")


if __name__ == "__main__":
  define_flags()
  cli_errors.run(main, user_errors=(ValueError, OSError), config_flag_names=())
