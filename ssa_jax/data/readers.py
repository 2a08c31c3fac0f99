"""Record readers for SlimPajama `.jsonl.zst`, parquet, `.jsonl` and `.txt`/`.raw` files, local or gs://.

Every reader yields `Record(index, text, set_name, bad)` in file order; `index` is the record's position
in the file (a line for JSON lines, a row for parquet, an article/line for text), so a stream resumes by
re-opening the file and skipping `index < start` (zstd has no random access; skipping lines is cheap next
to tokenizing them). A bad record is yielded with `text=None` and `bad` naming its kind, never raised:

  invalid_json, missing_text (no `text` string), non_utf8, empty_text, truncated_file (a .zst that ends
  inside a frame: the partial last line is dropped), unreadable_file (cannot be opened or decoded).

Text files (`.txt`, `.raw`): WikiText's `wiki.*.raw` is split into one document per article, an article
starting at each top-level heading line ` = Title = ` (sub-headings ` = = Sub = = ` stay inside). A text
file whose first non-blank line is not such a heading is read as one document per non-blank line.
"""

from __future__ import annotations

import io
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
  for ext, fmt in _EXTENSIONS.items():
    if path.endswith(ext):
      return fmt
  return None


def _set_name(meta) -> str:
  """meta.redpajama_set_name from a dict or a JSON string (the SlimPajama-6B parquet stores a string)."""
  if isinstance(meta, str):
    try:
      meta = json.loads(meta)
    except ValueError:
      return ""
  if isinstance(meta, dict):
    name = meta.get("redpajama_set_name", "")
    return name if isinstance(name, str) else ""
  return ""


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
    return Record(index, None, "", "invalid_json")
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


def _read_jsonl(f, start: int, compressed: bool) -> Iterator[Record]:
  chunks = _zst_chunks(f) if compressed else iter(lambda: f.read(_READ_BYTES), b"")
  index = -1
  lines = _lines(chunks)
  try:
    # A truncated frame cuts its last line short; hold each line back until the next one (or a clean
    # end) shows it was complete.
    held = None
    for raw in lines:
      if held is not None:
        index += 1
        if index >= start:
          yield _json_record(index, held)
      held = raw
    if held is not None:
      index += 1
      if index >= start:
        yield _json_record(index, held)
  except _Truncated:
    yield Record(index + 1, None, "", "truncated_file")


def _read_parquet(f, start: int) -> Iterator[Record]:
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

  pf = pq.ParquetFile(f)
  names = pf.schema_arrow.names
  if "text" not in names:
    yield Record(0, None, "", "unreadable_file")
    return
  columns = ["text"] + (["meta"] if "meta" in names else [])
  first = 0
  for group in range(pf.num_row_groups):
    rows = pf.metadata.row_group(group).num_rows
    if first + rows <= start:
      first += rows
      continue
    table = pf.read_row_group(group, columns=columns)
    texts = table.column("text").to_pylist()
    metas = table.column("meta").to_pylist() if "meta" in columns else [None] * len(texts)
    for i, (text, meta) in enumerate(zip(texts, metas)):
      if first + i >= start:
        yield _check_text(first + i, text, _set_name(meta))
    first += rows


def _read_text(f, start: int) -> Iterator[Record]:
  mode, index, article = None, -1, []

  def flush():
    return _check_text(index, "".join(article), "")

  for raw in _lines(iter(lambda: f.read(_READ_BYTES), b"")):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError:
      if mode != "article":
        index += 1
      if index >= start:
        yield Record(index, None, "", "non_utf8")
      continue
    if mode is None and line.strip():
      mode = "article" if _HEADING.match(line) else "line"
    if mode == "article":
      if _HEADING.match(line):
        if article and index >= start:
          yield flush()
        index, article = index + 1, []
      if index >= 0:
        article.append(line + "\n")
    elif mode == "line" and line.strip():
      index += 1
      if index >= start:
        yield Record(index, line, "", None)
  if mode == "article" and article and index >= start:
    yield flush()


def read_records(path: str, fmt: str = "auto", start: int = 0) -> Iterator[Record]:
  """Records of one file from record `start` on; bad ones flagged, never raised."""
  fmt = format_of(path) if fmt == "auto" else fmt
  if fmt is None:
    raise ValueError(f"{path}: no reader for this file type (expected one of {sorted(_EXTENSIONS)})")
  try:
    f = epath.Path(path).open("rb")
  except OSError:
    yield Record(start, None, "", "unreadable_file")
    return
  with f:
    f = io.BufferedReader(f) if not isinstance(f, io.BufferedIOBase) else f
    try:
      if fmt in ("jsonl_zst", "jsonl"):
        yield from _read_jsonl(f, start, compressed=fmt == "jsonl_zst")
      elif fmt == "parquet":
        yield from _read_parquet(f, start)
      else:
        yield from _read_text(f, start)
    except (OSError, ValueError, zstandard.ZstdError) as e:
      # Corrupt frames, unreadable parquet: the rest of the file is lost, the stream goes on.
      del e
      yield Record(start, None, "", "unreadable_file")
