"""One pass over a split's documents with a tokenizer: the shared loop of `inspect`, `token_counts` and tfds_builder."""

from __future__ import annotations

import collections
import dataclasses
from typing import Iterator

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


def documents(path: str, split: str, tokenizer, result: ScanResult, *, fmt: str = "auto", max_docs: int = 0,
              chunk: int = 256) -> Iterator[tuple[str, str, list[int]]]:
  """(text, set name, ids + EOS) of every usable document, in file order; counts files and bad records in `result`."""
  files = list_files(path, split, fmt)
  result.files = len(files)
  pending, seen = [], 0
  for file in files:
    usable = False
    for rec in read_records(file, fmt):
      if rec.bad is not None:  # the pipeline's rule too (packing.Stream): a record is usable when not bad
        result.bad[rec.bad] += 1
        continue
      usable, seen = True, seen + 1
      pending.append(rec)
      if len(pending) >= chunk or seen == max_docs:
        yield from _encoded(pending, tokenizer)
        pending = []
        if seen == max_docs:
          return
    if not usable:
      result.files_without_documents.append(file)
  yield from _encoded(pending, tokenizer)


def _encoded(records: list, tokenizer) -> Iterator[tuple[str, str, list[int]]]:
  # Batched: the tokenizers library spreads the batch over the cores.
  for rec, ids in zip(records, tokenizer.encode_batch([r.text for r in records])):
    yield rec.text, rec.set_name, ids + [tokenizer.eos_id]


def scan(path: str, split: str, tokenizer, *, fmt: str = "auto", max_docs: int = 0) -> ScanResult:
  """Tokenize every document of `split` under `path` as the pipeline does (BOS per tokenizer, EOS after)."""
  result = ScanResult()
  for text, name, ids in documents(path, split, tokenizer, result, fmt=fmt, max_docs=max_docs):
    result.documents += 1
    result.tokens += len(ids)
    result.tokens_per_set[name or "(none)"] += len(ids)
    result.docs_per_set[name or "(none)"] += 1
    if result.sample is None:
      result.sample = text
  return result
