"""One pass over a split's documents with a tokenizer: the shared loop of `inspect` and `token_counts`."""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable

from ssa_jax.data.readers import read_records
from ssa_jax.data.sources import list_files


@dataclasses.dataclass
class ScanResult:
  files: int = 0
  documents: int = 0
  tokens: int = 0
  bad: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  tokens_per_set: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  docs_per_set: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  sample: str | None = None
  # Files read whole without one usable record: what the training pipeline skips with a warning.
  files_without_documents: list[str] = dataclasses.field(default_factory=list)


def scan(path: str, split: str, tokenizer, *, fmt: str = "auto", max_docs: int = 0, chunk: int = 256,
         on_tokens: Callable[[list[int]], None] | None = None) -> ScanResult:
  """Tokenize every document of `split` under `path` as the pipeline does (BOS per tokenizer, EOS after)."""
  result = ScanResult()
  files = list_files(path, split, fmt)
  result.files = len(files)
  pending: list[tuple[str, str]] = []

  def flush():
    for (text, name), ids in zip(pending, tokenizer.encode_batch([t for t, _ in pending])):
      ids = ids + [tokenizer.eos_id]
      result.documents += 1
      result.tokens += len(ids)
      result.tokens_per_set[name or "(none)"] += len(ids)
      result.docs_per_set[name or "(none)"] += 1
      if result.sample is None:
        result.sample = text
      if on_tokens is not None:
        on_tokens(ids)
    pending.clear()

  for file in files:
    usable = False
    for rec in read_records(file, fmt):
      if rec.bad is not None:  # the pipeline's rule too (packing.Stream): a record is usable when not bad
        result.bad[rec.bad] += 1
        continue
      usable = True
      pending.append((rec.text, rec.set_name))
      if len(pending) >= chunk:
        flush()
      if max_docs and result.documents + len(pending) >= max_docs:
        flush()
        return result
    if not usable:
      result.files_without_documents.append(file)
  flush()
  return result
