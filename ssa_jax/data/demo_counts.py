"""Token counts of the demo corpus's train split: the `feature_path='demo'` of the frequency token term.

The Table 8 row "Position + Frequency" runs on the demo like every other row; its fixed feature phi(token) is
the standardized log frequency of each token in the demo train split, counted once per tokenizer and cached
beside the demo corpus.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib

import numpy as np

from ssa_jax.data.demo import atomic_write
from ssa_jax.data.token_counts import count_tokens
from ssa_jax.data.tokenizer import load_tokenizer

DEMO_FEATURE_PATH = "demo"  # the value of config.model.ssa.feature_path that asks for these counts


def ensure_demo_token_counts(cache_dir: str, corpus_path: str, tokenizer_path: str) -> str:
  """Counts (int64 .npy) of every token id over `corpus_path`'s train split; written once, returns the path."""
  # One counts file per tokenizer: keyed by the tokenizer file's contents (a directory: by its path).
  key = (pathlib.Path(tokenizer_path).read_bytes() if os.path.isfile(tokenizer_path)
         else os.path.abspath(tokenizer_path).encode())
  name = f"train_{hashlib.sha256(key).hexdigest()[:16]}.npy"
  path = os.path.join(os.path.expanduser(cache_dir), "kjv_token_counts", name)
  if os.path.exists(path):
    return path
  counts = count_tokens(corpus_path, "train", load_tokenizer(tokenizer_path))
  buf = io.BytesIO()
  np.save(buf, counts)
  atomic_write(path, buf.getvalue())
  return path
