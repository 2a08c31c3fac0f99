"""Record readers for SlimPajama `.jsonl.zst`, parquet, `.jsonl` and `.txt`/`.raw` files, local or gs://.

Every reader yields `Record(index, text, set_name, bad)` in file order; a stream resumes by re-opening the file
and skipping `index < start`. `index` is a line of a JSON-lines file (zstd has no random access; skipping lines
is cheap next to tokenizing them), a row of a parquet file, a byte offset (a seek) for text files and for the
parts of a .jsonl. A bad record is yielded with `text=None` and `bad` naming its kind, never raised:

  invalid_json, missing_text (no `text` string), non_utf8, empty_text, truncated_file (a .zst that ends
  inside a frame: the partial last line is dropped), unreadable_file (cannot be opened or decoded).

A file shared by `count` readers (fewer files than data streams) is read in parts: `part=(rank, count)`
yields only the records of part `rank`, without decoding the others:
  .jsonl / .txt / .raw  records (lines, articles) that start in the byte range [rank, rank + 1) * size / count.
  .parquet              the row range [rank, rank + 1) * rows / count; only the row groups overlapping it are read.
  .jsonl.zst            every count-th line (index % count == rank): each reader decompresses the whole file,
                        but decodes and parses only its own lines.

Text files: WikiText's `wiki.*.raw` is one document per article, an article starting at each top-level heading
line ` = Title = ` (sub-headings ` = = Sub = = ` stay inside); a text file whose first non-blank line is not
such a heading is one document per non-blank line.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from typing import Iterator, NamedTuple

import zstandard
from etils import epath

BAD_KINDS = ("invalid_json", "missing_text", "non_utf8", "empty_text", "truncated_file", "unreadable_file")
_EXTENSIONS = {".jsonl.zst": "jsonl_zst", ".jsonl": "jsonl", ".parquet": "parquet", ".txt": "text",
               ".raw": "text"}
_HEADING = re.compile(r"^ = [^=].* = $")
_READ_BYTES = 1 << 20


class Record(NamedTuple):
  index: int
  text: str | None
  set_name: str
  bad: str | None


class _Truncated(Exception):
  """A zstd stream ended inside a frame."""


def format_of(path: str) -> str | None:
  """The reader format for a file name, or None when no reader handles it."""
  return next((fmt for ext, fmt in _EXTENSIONS.items() if path.endswith(ext)), None)


def _set_name(meta) -> str:
  """meta.redpajama_set_name from a dict or a JSON string (the SlimPajama-6B parquet stores a string)."""
  if isinstance(meta, str):
    try:
      meta = json.loads(meta)
    except ValueError:
      return ""
  name = meta.get("redpajama_set_name", "") if isinstance(meta, dict) else ""
  return name if isinstance(name, str) else ""


def _check_text(index: int, text, set_name: str) -> Record:
  if not isinstance(text, str):
    return Record(index, None, set_name, "missing_text")
  if not text.strip():
    return Record(index, None, set_name, "empty_text")
  return Record(index, text, set_name, None)


def _json_record(index: int, raw: bytes) -> Record:
  try:
    line = raw.decode("utf-8")
  except UnicodeDecodeError:
    return Record(index, None, "", "non_utf8")
  try:
    obj = json.loads(line)
  except ValueError:
    obj = None
  if not isinstance(obj, dict):
    return Record(index, None, "", "invalid_json")
  return _check_text(index, obj.get("text"), _set_name(obj.get("meta")))


def _zst_chunks(f) -> Iterator[bytes]:
  """Decompressed bytes of a (multi-frame) zstd file; raises _Truncated if it ends inside a frame."""
  dctx = zstandard.ZstdDecompressor()
  dobj, fed = dctx.decompressobj(), False
  while raw := f.read(_READ_BYTES):
    while raw:
      fed = True
      out = dobj.decompress(raw)
      if out:
        yield out
      if dobj.eof:
        raw, dobj, fed = dobj.unused_data, dctx.decompressobj(), False
      else:
        raw = b""
  if fed and not dobj.eof:
    raise _Truncated()


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
  """Complete lines (without the newline) of a byte stream; a final line without newline is kept."""
  rest = b""
  for chunk in chunks:
    parts = (rest + chunk).split(b"\n")
    rest = parts.pop()
    yield from parts
  if rest:
    yield rest


def _read_jsonl(f, start: int, compressed: bool, rank: int = 0, count: int = 1) -> Iterator[Record]:
  chunks = _zst_chunks(f) if compressed else iter(lambda: f.read(_READ_BYTES), b"")
  index, held = -1, None
  try:
    # A truncated frame cuts its last line short; hold each line back until the next one (or the clean
    # end, None) shows it was complete.
    for raw in itertools.chain(_lines(chunks), [None]):
      if held is not None:
        index += 1
        if index >= start and index % count == rank:
          yield _json_record(index, held)
      held = raw
  except _Truncated:
    if (index + 1) % count == rank:
      yield Record(index + 1, None, "", "truncated_file")


def _byte_range(f, rank: int, count: int) -> tuple[int, int]:
  size = f.seek(0, io.SEEK_END)
  return size * rank // count, size * (rank + 1) // count


def _lines_from(f, pos: int) -> Iterator[tuple[int, bytes]]:
  """(byte offset, line without newline) of every line starting at or after byte `pos`."""
  if pos > 0:
    f.seek(pos - 1)
    offset = pos - 1 + len(f.readline())  # The rest of the line holding byte pos - 1 belongs to earlier.
  else:
    f.seek(0)
    offset = 0
  for raw in iter(f.readline, b""):
    yield offset, raw[:-1] if raw.endswith(b"\n") else raw
    offset += len(raw)


def _read_jsonl_part(f, start: int, rank: int, count: int) -> Iterator[Record]:
  begin, end = _byte_range(f, rank, count)
  for offset, raw in _lines_from(f, max(begin, start)):
    if offset >= end:
      return
    yield _json_record(offset, raw)


def _read_parquet(f, start: int, rank: int = 0, count: int = 1) -> Iterator[Record]:
  # Only .parquet files need pyarrow (slow to import); text and JSON-lines corpora never load it.
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

  pf = pq.ParquetFile(f)
  names = pf.schema_arrow.names
  if "text" not in names:
    if rank == 0:
      yield Record(0, None, "", "unreadable_file")
    return
  columns = ["text"] + (["meta"] if "meta" in names else [])
  total = pf.metadata.num_rows
  start, stop = max(start, total * rank // count), total * (rank + 1) // count
  first = 0
  for group in range(pf.num_row_groups):
    rows = pf.metadata.row_group(group).num_rows
    if first + rows > start and first < stop:  # only the row groups overlapping [start, stop) are read
      table = pf.read_row_group(group, columns=columns)
      texts = table.column("text").to_pylist()
      metas = table.column("meta").to_pylist() if "meta" in columns else [None] * len(texts)
      for i, (text, meta) in enumerate(zip(texts, metas)):
        if start <= first + i < stop:
          yield _check_text(first + i, text, _set_name(meta))
    first += rows


def _articles(f) -> bool:
  """Whether the first decodable non-blank line is a top-level heading (else: one document per line)."""
  f.seek(0)
  for raw in iter(f.readline, b""):
    try:
      line = raw.decode("utf-8").rstrip("\n")
    except UnicodeDecodeError:
      continue
    if line.strip():
      return bool(_HEADING.match(line))
  return False


def _read_text(f, start: int, rank: int, count: int) -> Iterator[Record]:
  """Records of a text file that start in the byte range of part `rank`, from byte `start` on; index = the offset."""
  articles = _articles(f)
  begin, end = _byte_range(f, rank, count)
  pos = max(begin, start)
  article_at, article = -1, []  # An article that starts in the range runs on to the next heading.
  for offset, raw in _lines_from(f, pos):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError:
      if offset >= end and (not articles or article_at < 0):
        break
      # Read from byte 0 or inside an article; else the line belongs to an article that starts before `pos`.
      if not articles or article_at >= 0 or pos == 0:
        yield Record(offset, None, "", "non_utf8")
      continue
    if articles:
      if _HEADING.match(line):
        if article_at >= 0:
          yield _check_text(article_at, "".join(article), "")
        if offset >= end:
          return
        article_at, article = offset, []
      if article_at >= 0:
        article.append(line + "\n")
    else:
      if offset >= end:
        return
      if line.strip():
        yield Record(offset, line, "", None)
  if articles and article_at >= 0:
    yield _check_text(article_at, "".join(article), "")


def read_records(path: str, fmt: str = "auto", start: int = 0, part: tuple[int, int] = (0, 1)) -> Iterator[Record]:
  """Records of one file from record `start` on (of part `part[0]` of `part[1]`); bad ones flagged, never raised."""
  fmt = format_of(path) if fmt == "auto" else fmt
  if fmt is None:
    raise ValueError(f"{path}: no reader for this file type (expected one of {sorted(_EXTENSIONS)})")
  rank, count = part
  if not 0 <= rank < count:
    raise ValueError(f"{path}: part {rank} of {count} does not exist")
  try:
    f = epath.Path(path).open("rb")
  except OSError:
    yield Record(start, None, "", "unreadable_file")
    return
  with f:
    f = io.BufferedReader(f) if not isinstance(f, io.BufferedIOBase) else f
    try:
      if fmt == "jsonl_zst":
        yield from _read_jsonl(f, start, compressed=True, rank=rank, count=count)
      elif fmt == "jsonl":
        yield from (_read_jsonl(f, start, compressed=False) if count == 1 else
                    _read_jsonl_part(f, start, rank, count))
      elif fmt == "parquet":
        yield from _read_parquet(f, start, rank, count)
      else:
        yield from _read_text(f, start, rank, count)
    except (OSError, ValueError, zstandard.ZstdError):
      # Corrupt frames, unreadable parquet: the rest of the file is lost, the stream goes on.
      yield Record(start, None, "", "unreadable_file")
