"""Which tokenizer belongs to a model: the files of a model directory, a run config's tokenizer, the vocab check.

Shared by the Hugging Face conversion (ssa_jax/formats/hf.py: an export carries the tokenizer its checkpoint was
trained with, as a Hugging Face directory does, so that `eval.py --hf_dir=EXPORT` and `transformers` find it
there) and by evaluation and the analyses (ssa_jax/evaluate/loading.py), which both import it, never each other.
"""

from __future__ import annotations

import json
from typing import Any

from etils import epath

from ssa_jax.data import demo
from ssa_jax.data.tokenizer import TOKENIZER_FILES, HFTokenizer, tokenizer_file, tokenizer_in

# Read beside tokenizer.json for the EOS / BOS names (ssa_jax.data.tokenizer, transformers).
SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def run_config_tokenizer(run_config: dict[str, Any]) -> str | None:
  """The tokenizer a run config names: config.data.tokenizer_path, else the demo BPE of a demo run, else the
  tokenizer in config.init.hf_dir (a fine-tune or an imported model); None when it names none."""
  data = run_config.get("data") or {}
  if data.get("tokenizer_path"):
    return str(data["tokenizer_path"])
  if data.get("demo"):
    cache = str(epath.Path(data.get("cache_dir") or "~/.cache/ssa_jax").expanduser())
    return demo.ensure_demo_tokenizer(cache, int(data.get("demo_vocab_size", 2048)))
  hf_dir = (run_config.get("init") or {}).get("hf_dir")
  if hf_dir and epath.Path(hf_dir).exists():
    return tokenizer_in(hf_dir)
  return None


def check_vocab(tokenizer, model_vocab: int, slack: int = 1024) -> None:
  """Fails unless the model's vocabulary covers the tokenizer's (padded by at most `slack` rows)."""
  if tokenizer.vocab_size > model_vocab:
    raise ValueError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens but the model's vocabulary "
                     f"has only {model_vocab}: they do not belong together (pass the model's own --tokenizer)")
  if model_vocab - tokenizer.vocab_size > slack:
    raise ValueError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens, the model's vocabulary "
                     f"{model_vocab}: more than {slack} rows apart, so this is not the model's tokenizer "
                     "(pass the right --tokenizer)")


def tokenizer_files(path: epath.PathLike) -> dict[str, epath.Path]:
  """{name in an export: source file} for a tokenizer.json / .model file or a directory holding one.

  A file named otherwise (e.g. `gpt2.json`, `llama.model`) is exported under the standard name.
  """
  main = tokenizer_file(path)
  if not (main.name.endswith(".json") or main.name.endswith(".model")):
    raise ValueError(f"tokenizer {main}: expected a tokenizer.json, a SentencePiece .model, or a directory")
  files = {TOKENIZER_FILES[0] if main.name.endswith(".json") else TOKENIZER_FILES[1]: main}
  for name in SIDE_FILES:
    if (main.parent / name).exists():
      files[name] = main.parent / name
  return files


def copy_tokenizer(path: epath.PathLike, out_dir: epath.PathLike) -> list[str]:
  """Copies the tokenizer at `path` into `out_dir` (standard names); returns the names written. A tokenizer.json
  without a tokenizer_config.json of its own gets one (`fast_tokenizer_config`)."""
  out_dir = epath.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  files = tokenizer_files(path)
  for name, src in files.items():
    (out_dir / name).write_bytes(src.read_bytes())
  if TOKENIZER_FILES[0] in files and SIDE_FILES[0] not in files:
    config = fast_tokenizer_config(HFTokenizer(str(files[TOKENIZER_FILES[0]])))
    (out_dir / SIDE_FILES[0]).write_text(json.dumps(config, indent=2) + "\n")
    return sorted([*files, SIDE_FILES[0]])
  return sorted(files)


def fast_tokenizer_config(tokenizer: HFTokenizer) -> dict[str, str]:
  """A tokenizer_config.json that makes `transformers.AutoTokenizer` load a bare tokenizer.json as it is: without
  one it picks the class of the directory's model family, which may add tokens of its own (GPT-NeoX's
  `<|padding|>`: 50,258 tokens for GPT-2's 50,257) or lose the EOS name (Llama's)."""
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": tokenizer.token_name(tokenizer.eos_id)}
  if tokenizer.bos_id is not None:
    config["bos_token"] = tokenizer.token_name(tokenizer.bos_id)
  return config
