"""Finding the files of a split under a data path (local or gs://), in one global, sorted order."""

from __future__ import annotations

from typing import Iterator

from etils import epath

from ssa_jax.data.readers import format_of
from ssa_jax.runtime.gcs import require_gcs

# Words a file name may use for a split when the path has no split directories (wiki.valid.raw).
_SPLIT_WORDS = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


def _walk(root: epath.Path) -> Iterator[epath.Path]:
  """All files below `root` (etils refuses `**` globs on GCS, so walk the directories ourselves)."""
  for child in root.iterdir():
    if child.is_dir():
      yield from _walk(child)
    else:
      yield child


def _readable(paths, fmt: str) -> list[epath.Path]:
  return [p for p in paths if p.is_file() and (format_of(p.name) if fmt == "auto" else fmt) and
          not p.name.startswith(".")]


def _names_split(name: str, split: str) -> bool:
  words = name.replace("-", ".").replace("_", ".").split(".")
  return any(w in words for w in _SPLIT_WORDS.get(split, (split,)))


def _corpus_root_hint(root: epath.Path, split: str) -> str:
  """'; ... pass --config.data.path=CORPUS' when `root` is one split directory of a corpus that holds `split`."""
  is_split_dir = any(root.name in words or root.name == name for name, words in _SPLIT_WORDS.items())
  if is_split_dir and (root.parent / split).is_dir():
    return (f"; {root} is the {root.name!r} split of the corpus {root.parent}: pass the corpus root, "
            f"--config.data.path={root.parent}")
  return ""


def list_files(path: str, split: str, fmt: str = "auto") -> list[str]:
  """Files of `split` under `path`: PATH/SPLIT/** if that dir exists, else files naming the split, else PATH itself if a file.

  Sorted by path, so every process sees the same global order whatever the listing order of the store.
  """
  require_gcs(path, "config.data.path")
  root = epath.Path(path)
  if not root.exists():
    raise FileNotFoundError(f"config.data.path: {path!r} does not exist")
  if root.is_file():
    return [str(root)]
  if (root / split).is_dir():
    files = _readable(_walk(root / split), fmt)
  else:
    files = [p for p in _readable(_walk(root), fmt) if _names_split(p.name, split)]
  if not files:
    raise FileNotFoundError(
        f"config.data.path: no {split!r} files under {path!r} (expected {path}/{split}/**/*.jsonl.zst|"
        f".parquet|.jsonl|.txt, or file names containing {_SPLIT_WORDS.get(split, (split,))})"
        + _corpus_root_hint(root, split))
  return sorted(str(p) for p in files)
