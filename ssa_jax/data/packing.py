"""One reader stream: its files -> kept documents -> tokens (BOS per tokenizer, EOS after each) -> windows.

Windows are consecutive, non-overlapping slices of `seq_len + 1` tokens of the stream's token stream
(documents joined, no padding). A window boundary always falls inside or at the end of one document,
so the exact position of a stream is small: `(epoch, file_pos, record, repeat, offset)` = resume at
record `record` of the stream's `file_pos`-th file in epoch `epoch`, copy `repeat` of it, with `offset`
of its tokens already emitted. Nothing before that position is read again on restore and nothing after
it was counted, so the counters saved with a position are exact too.

Which files a stream reads (`stream_files`): each epoch permutes the sorted global file list by (seed, epoch);
with F >= S files, stream s reads permuted files s, s+S, s+2S, ...; with F < S, the k streams sharing file s % F
each read one part of it (readers.read_records `part`), so no stream decodes the records of another.
A file read whole without a usable record (empty, or every record bad) is skipped with one warning naming it
and counted (`empty_files`). A stream whose share of an epoch yields no document reads that epoch's other files
whole instead (`_reads`; documents then repeat across streams), so a few bad files never stop a run. Only when
no file of the split yields a document does the stream fail, with a ConfigError naming the files; a
non-repeating (validation) stream just ends.
Mixture: a record of set `name` is emitted floor(w) or ceil(w) times (w = mixture weight, 0 for an
excluded set), the fractional part decided by a hash of (seed, epoch, file, record), so no rng state.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import threading
from typing import Iterator, Sequence

import numpy as np

from ssa_jax.data.readers import BAD_KINDS, read_records
from ssa_jax.errors import ConfigError

_log = logging.getLogger(__name__)
# Files already reported as holding no usable document: one warning per file and process, not one per stream,
# epoch or rebuilt (validation) iterator.
_EMPTY_FILES_WARNED: set[str] = set()
_EMPTY_FILES_LOCK = threading.Lock()
_POS_KEYS = ("epoch", "file_pos", "record", "repeat")  # a stream position, as Doc.pos and the saved state
_STAT_NAMES = {"documents": "documents", "tokens": "tokens", "filtered": "filtered", "empty_file": "empty_files"}


@dataclasses.dataclass(frozen=True)
class StreamPlan:
  """The files of one stream in one epoch (indices into the global list) and its record slice."""

  files: tuple[int, ...]
  stride: int
  rank: int


def stream_files(num_files: int, num_streams: int, seed: int, epoch: int) -> list[StreamPlan]:
  """Which files every stream reads in `epoch`; depends on (files, streams, seed, epoch) only."""
  order = epoch_order(num_files, seed, epoch)
  if num_files >= num_streams:
    return [StreamPlan(tuple(order[s::num_streams]), 1, 0) for s in range(num_streams)]
  return [StreamPlan((order[s % num_files],), len(range(s % num_files, num_streams, num_files)),
                     s // num_files) for s in range(num_streams)]


def epoch_order(num_files: int, seed: int, epoch: int) -> list[int]:
  """The permutation of the sorted global file list that epoch `epoch` reads in."""
  return np.random.default_rng([seed, epoch]).permutation(num_files).tolist()


def _names(files: Sequence[str], at_most: int = 5) -> str:
  shown = ", ".join(files[:at_most])
  return shown + (f" and {len(files) - at_most} more" if len(files) > at_most else "")


def _no_document_error(files: Sequence[str], usable_seen: bool) -> ConfigError:
  """The one-line error of a split whose files, all read whole, gave the stream no document."""
  if usable_seen:
    return ConfigError(f"config.data.exclude / config.data.mixture: they drop every usable document of the "
                       f"{len(files)} file(s) of this split ({_names(files)})")
  return ConfigError(f"config.data.path: none of the {len(files)} file(s) of this split holds a usable document "
                     f"({_names(files)}): every record is bad (invalid JSON, no `text` string, empty or not UTF-8; "
                     "`python -m ssa_jax.data.inspect PATH` counts them by kind)")


def check_documents(files: Sequence[str], fmt: str, mixture: dict, exclude: Sequence[str]) -> None:
  """Raises the one-line ConfigError of a split none of whose files holds a document that training keeps.

  Reads only until the first usable record of a kept set (one record for a real corpus), so a run checks its
  data before it writes anything.
  """
  usable_seen = False
  for path in files:
    for rec in read_records(path, fmt):
      if rec.bad is None:
        usable_seen = True
        if rec.set_name not in exclude and float(mixture.get(rec.set_name, 1.0)) > 0:
          return
  raise _no_document_error(files, usable_seen)


def _uniform(seed: int, epoch: int, file_index: int, record: int) -> float:
  digest = hashlib.blake2b(f"{seed}:{epoch}:{file_index}:{record}".encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little") / 2.0**64


@dataclasses.dataclass
class Doc:
  """A kept document's tokens and where it sits; counts of what was passed over just before it."""

  tokens: list[int]
  pos: tuple[int, int, int, int]  # (epoch, file_pos, record, repeat)
  next_pos: tuple[int, int, int, int]
  skipped: collections.Counter


def _warn_empty_file(path: str, bad_records: int) -> None:
  with _EMPTY_FILES_LOCK:
    if path in _EMPTY_FILES_WARNED:
      return
    _EMPTY_FILES_WARNED.add(path)
  what = f"all {bad_records} of its records are bad" if bad_records else "it holds no record"
  _log.warning("data: skipping %s: no usable document in it (%s); its later reads are only counted "
               "(data stats: empty_files)", path, what)


class Stream:
  """Windows of one stream from a saved position on; `state()` after a window resumes right after it."""

  def __init__(self, *, stream_id: int, files: Sequence[str], fmt: str, num_streams: int, seed: int,
               tokenizer, window: int, mixture: dict, exclude: Sequence[str], docs_per_chunk: int,
               executor: concurrent.futures.Executor, repeat: bool, state: dict | None = None,
               logged: set | None = None):
    self.stream_id, self._files, self._fmt, self._num_streams = stream_id, list(files), fmt, num_streams
    self._seed, self._tok, self._window, self._repeat = seed, tokenizer, window, repeat
    self._mixture, self._exclude = dict(mixture), set(exclude)
    self._chunk, self._executor = docs_per_chunk, executor
    self._logged = logged if logged is not None else set()
    state = state or {**dict.fromkeys(_POS_KEYS, 0), "offset": 0, "stats": {}}
    self._pos = tuple(state[k] for k in _POS_KEYS)
    self._offset = state["offset"]
    self._stats = collections.Counter(state["stats"])
    self._docs = self._doc_iter()
    self._doc: Doc | None = None

  def _reads(self, plan: StreamPlan, epoch: int) -> list[tuple[int, tuple[int, int]]]:
    """(file index, part) of every file position of an epoch: the stream's share, then its fallback: every
    other file of the epoch, whole, in the epoch's order rotated by the stream id (so they do not read in step)."""
    share = [(f, (plan.rank, plan.stride)) for f in plan.files]
    order = epoch_order(len(self._files), self._seed, epoch)
    rotated = order[self.stream_id % len(order):] + order[:self.stream_id % len(order)]
    read_whole = set(plan.files) if plan.stride == 1 else set()
    return share + [(f, (0, 1)) for f in rotated if f not in read_whole]

  def _records(self) -> Iterator[tuple[tuple[int, int, int, int], tuple, str | None, tuple | None]]:
    """(pos, next_pos, text or None, None or (bad kind / 'filtered' / 'empty_file', where)) from the saved position."""
    epoch, file_pos, record, repeat = self._pos
    while True:
      plan = stream_files(len(self._files), self._num_streams, self._seed, epoch)[self.stream_id]
      reads = self._reads(plan, epoch)
      # A saved position inside an epoch lies at or after a document emitted in it (positions are taken
      # from emitted documents), so only an epoch read from its start can find its share empty.
      emitted = (file_pos, record, repeat) != (0, 0, 0)
      usable_anywhere = kept_anywhere = emitted  # kept: of a set the mixture keeps (weight > 0)
      for fp in range(file_pos, len(reads)):
        if fp == len(plan.files):
          if emitted or not self._repeat:
            break
          self._note_fallback(plan, epoch)
        file_index, part = reads[fp]
        path = self._files[file_index]
        start = record if fp == file_pos else 0
        usable, bad = False, 0
        for rec in read_records(path, self._fmt, start, part=part):
          where = (path, rec.index)
          if rec.bad is not None:
            bad += 1
            yield (epoch, fp, rec.index, 0), None, None, (rec.bad, where)
            continue
          usable = True
          weight = 0.0 if rec.set_name in self._exclude else float(self._mixture.get(rec.set_name, 1.0))
          kept_anywhere |= weight > 0
          copies = int(weight) + (_uniform(self._seed, epoch, file_index, rec.index) < weight - int(weight))
          if copies == 0:
            yield (epoch, fp, rec.index, 0), None, None, ("filtered", where)
          first = repeat if (fp == file_pos and rec.index == record) else 0
          for c in range(first, copies):
            nxt = (epoch, fp, rec.index, c + 1) if c + 1 < copies else (epoch, fp, rec.index + 1, 0)
            emitted = True
            yield (epoch, fp, rec.index, c), nxt, rec.text, None
        usable_anywhere |= usable
        if not usable and start == 0 and part == (0, 1):  # the whole file read: it holds no usable document
          yield (epoch, fp, 0, 0), None, None, ("empty_file", (path, bad))
      if not self._repeat:
        return
      if not emitted and not kept_anywhere:  # (kept but not drawn: fractional weights draw anew each epoch)
        raise _no_document_error(self._files, usable_anywhere)
      epoch, file_pos, record, repeat = epoch + 1, 0, 0, 0

  def _note_fallback(self, plan: StreamPlan, epoch: int) -> None:
    if "fallback" in self._logged:
      return
    self._logged.add("fallback")
    part = f"part {plan.rank + 1} of {plan.stride} of " if plan.stride > 1 else ""
    _log.warning("data: stream %d's share of epoch %d (%s%s) holds no usable document; such a stream reads the "
                 "epoch's other files whole instead, so documents repeat across streams (too little usable data "
                 "for %d streams? a lower config.data.num_streams avoids it)", self.stream_id, epoch, part,
                 _names([self._files[f] for f in plan.files]), self._num_streams)

  def _tokenize(self, items: list) -> list[Doc]:
    texts = [it[2] for it in items if it[2] is not None]
    encoded = iter(self._tok.encode_batch(texts)) if texts else iter(())
    docs, skipped = [], collections.Counter()
    for pos, nxt, text, bad in items:
      if text is None:
        kind, where = bad
        skipped[kind] += 1
        if kind == "empty_file":
          _warn_empty_file(*where)
        elif kind != "filtered" and kind not in self._logged:
          self._logged.add(kind)
          _log.warning("data: skipping bad record (%s) at %s record %d; further ones of this kind are "
                       "only counted (see stats)", kind, *where)
        continue
      docs.append(Doc(next(encoded) + [self._tok.eos_id], pos, nxt, skipped))
      skipped = collections.Counter()
    if skipped:
      docs.append(Doc([], (-1,), (-1,), skipped))  # Trailing skips, counted when pulled.
    return docs

  def _next_chunk(self, records) -> list[Doc] | None:
    items = []
    for item in records:
      items.append(item)
      if item[2] is not None and len(items) >= self._chunk:
        break
    return self._tokenize(items) if items else None

  def _doc_iter(self) -> Iterator[Doc]:
    """Tokenized documents; the next chunk is read and tokenized in the executor while this one is used."""
    records = self._records()
    future = self._executor.submit(self._next_chunk, records)
    while True:
      chunk = future.result()
      if chunk is None:
        return
      future = self._executor.submit(self._next_chunk, records)
      yield from chunk

  def count_windows(self, max_windows: int | None = None) -> int:
    """Windows this non-repeating stream yields from its saved position, at most `max_windows` (read in this thread)."""
    tokens = -self._offset  # The current document is read again from its start; its first tokens were emitted.
    records = self._records()
    while max_windows is None or tokens < max_windows * self._window:
      chunk = self._next_chunk(records)
      if chunk is None:
        break
      tokens += sum(len(d.tokens) for d in chunk)
    windows = max(tokens, 0) // self._window
    return windows if max_windows is None else min(windows, max_windows)

  def _pull(self) -> bool:
    """Advance to the next kept document (counting what was skipped); False at the end of the data."""
    resumed_inside = self._doc is None and self._offset > 0
    while True:
      doc = next(self._docs, None)
      if doc is None:
        return False
      self._stats.update(doc.skipped)
      if doc.tokens:
        break
    self._doc = doc
    if not resumed_inside:
      self._stats["documents"] += 1
      self._offset = 0
    return True

  def next_window(self) -> list[int] | None:
    """The next `window` tokens of this stream, or None when a non-repeating stream runs out."""
    out: list[int] = []
    while len(out) < self._window:
      if self._doc is None or self._offset >= len(self._doc.tokens):
        if not self._pull():
          return None
      take = self._doc.tokens[self._offset:self._offset + self._window - len(out)]
      out.extend(take)
      self._offset += len(take)
    self._stats["tokens"] += self._window
    return out

  def state(self) -> dict:
    """JSON-serialisable position right after the last window (see the module docstring)."""
    if self._doc is None:
      pos, offset = self._pos, self._offset
    elif self._offset < len(self._doc.tokens):
      pos, offset = self._doc.pos, self._offset
    else:
      pos, offset = self._doc.next_pos, 0
    return {**dict(zip(_POS_KEYS, pos)), "offset": offset, "stats": dict(self._stats)}

  def stats(self) -> dict[str, int]:
    """Counters of this stream: documents, tokens, filtered, empty_files (whole-file reads without a usable
    document), and one per bad-record kind with their sum bad_records."""
    out = {"documents": 0, "tokens": 0, "filtered": 0, "empty_files": 0, **{f"bad_{k}": 0 for k in BAD_KINDS}}
    for key, value in self._stats.items():
      out[_STAT_NAMES.get(key, f"bad_{key}")] = value
    out["bad_records"] = sum(v for k, v in out.items() if k.startswith("bad_"))
    return out
