"""The tokenizer files of a model directory: which files make a tokenizer, and copying them into an HF export.

An export carries the tokenizer its checkpoint was trained with (the run config's data.tokenizer_path), as
a Hugging Face directory does, so that `eval.py --hf_dir=EXPORT` and `transformers` find it there.
"""

from __future__ import annotations

from etils import epath

MAIN_FILES = ("tokenizer.json", "tokenizer.model")
# Read beside tokenizer.json for the EOS / BOS names (ssa_jax.data.tokenizer, transformers).
SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def tokenizer_files(path: epath.PathLike) -> dict[str, epath.Path]:
  """{name in an export: source file} for a tokenizer.json / .model file or a directory holding one.

  A file named otherwise (e.g. `gpt2.json`, `llama.model`) is exported under the standard name.
  """
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"tokenizer {path}: does not exist")
  if path.is_dir():
    main = next((path / n for n in MAIN_FILES if (path / n).exists()), None)
    if main is None:
      raise FileNotFoundError(f"tokenizer dir {path}: holds neither {' nor '.join(MAIN_FILES)}")
  elif path.name.endswith(".json") or path.name.endswith(".model"):
    main = path
  else:
    raise ValueError(f"tokenizer {path}: expected a tokenizer.json, a SentencePiece .model, or a directory")
  files = {MAIN_FILES[0] if main.name.endswith(".json") else MAIN_FILES[1]: main}
  for name in SIDE_FILES:
    if (main.parent / name).exists():
      files[name] = main.parent / name
  return files


def copy_tokenizer(path: epath.PathLike, out_dir: epath.PathLike) -> list[str]:
  """Copies the tokenizer at `path` into `out_dir` (standard names); returns the names written."""
  out_dir = epath.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  files = tokenizer_files(path)
  for name, src in files.items():
    (out_dir / name).write_bytes(src.read_bytes())
  return sorted(files)
