"""Finding the files of a split under a data path (local or gs://), in one global, sorted order."""

from __future__ import annotations

import re
from typing import Iterator

from etils import epath

from ssa_jax.data.readers import format_of
from ssa_jax.runtime.gcs import require_gcs

# Words a file name may use for a split when the path has no split directories (wiki.valid.raw).
_SPLIT_WORDS = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


def _walk(root: epath.Path, fmt: str) -> Iterator[epath.Path]:
  """Readable files below `root` (etils refuses `**` globs on GCS, so walk the directories ourselves)."""
  for child in root.iterdir():
    if child.is_dir():
      yield from _walk(child, fmt)
    elif child.is_file() and (format_of(child.name) if fmt == "auto" else fmt) and not child.name.startswith("."):
      yield child


def list_files(path: str, split: str, fmt: str = "auto") -> list[str]:
  """Files of `split` under `path`: PATH itself if a file, PATH/SPLIT/** if that dir exists, else files naming it.

  Sorted by path, so every process sees the same global order whatever the listing order of the store.
  """
  require_gcs(path, "config.data.path")
  root = epath.Path(path)
  if not root.exists():
    raise FileNotFoundError(f"config.data.path: {path!r} does not exist")
  if root.is_file():
    return [str(root)]
  words = _SPLIT_WORDS.get(split, (split,))
  if (root / split).is_dir():
    files = list(_walk(root / split, fmt))
  else:
    files = [p for p in _walk(root, fmt) if set(words) & set(re.split(r"[-_.]", p.name))]
  if not files:
    hint = ""
    if any(root.name in w or root.name == name for name, w in _SPLIT_WORDS.items()) and (root.parent / split).is_dir():
      hint = (f"; {root} is the {root.name!r} split of the corpus {root.parent}: pass the corpus root, "
              f"--config.data.path={root.parent}")
    raise FileNotFoundError(f"config.data.path: no {split!r} files under {path!r} (expected {path}/{split}/**/"
                            f"*.jsonl.zst|.parquet|.jsonl|.txt, or file names containing {words}){hint}")
  return sorted(str(p) for p in files)
