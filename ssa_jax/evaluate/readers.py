"""Task files -> Docs: JSON lines (one record a line) or a raw WikiText file; bad records reported and skipped."""

from __future__ import annotations

import dataclasses
import json
import logging

from etils import epath

from ssa_jax.evaluate import wikitext
from ssa_jax.evaluate.tasks import Doc, TaskSpec

log = logging.getLogger(__name__)
_MAX_LOGGED = 5  # malformed records logged one by one per task; the rest are counted


@dataclasses.dataclass
class TaskDocs:
  """The documents of one task as read, plus what was skipped and why."""

  path: str
  docs: list[Doc]
  original: int  # valid documents in the file (lm-eval's n-samples "original")
  skipped: list[str]  # "file:line: reason" for each malformed record


def _records(spec: TaskSpec, path: epath.Path) -> list[tuple[int, object]]:
  """(line number, parsed record or the exception that parsing raised) for every record of the file."""
  text = path.read_text(encoding="utf-8")
  if spec.file_format == "wikitext_raw":
    return [(0, {"page": page}) for page in wikitext.split_pages(text)]
  out = []
  for lineno, line in enumerate(text.split("\n"), start=1):
    if not line.strip():
      continue
    try:
      out.append((lineno, json.loads(line)))
    except json.JSONDecodeError as e:
      out.append((lineno, e))
  return out


def read_task(spec: TaskSpec, data_dir: str, limit: int | None = None) -> TaskDocs:
  """The first `limit` valid documents (all when None) of `spec`'s file under `data_dir`."""
  path = epath.Path(data_dir) / spec.filename
  docs, skipped = [], []
  for lineno, record in _records(spec, path):
    where = f"{path}:{lineno}" if lineno else f"{path} (page {len(docs) + len(skipped) + 1})"
    if isinstance(record, Exception):
      skipped.append(f"{where}: not valid JSON ({record.msg})")
      continue
    if not isinstance(record, dict):
      skipped.append(f"{where}: expected a JSON object, got {type(record).__name__}")
      continue
    try:
      docs.append(spec.build(record))
    except KeyError as e:
      skipped.append(f"{where}: missing field {e}")
    except (ValueError, TypeError, IndexError, AttributeError) as e:
      skipped.append(f"{where}: {type(e).__name__}: {e}")
  for message in skipped[:_MAX_LOGGED]:
    log.warning("task %s: skipped malformed record %s", spec.name, message)
  if len(skipped) > _MAX_LOGGED:
    log.warning("task %s: ... %d malformed records skipped in all", spec.name, len(skipped))
  return TaskDocs(str(path), docs[:limit] if limit and limit > 0 else docs, len(docs), skipped)
