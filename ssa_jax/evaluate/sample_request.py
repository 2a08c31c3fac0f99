"""sample.py's request, checked before any parameter loads: the model source, the prompts (flags or a file),
the tokenizer against the model's vocabulary, the sampler."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

from etils import epath

from ssa_jax.data.tokenizer import load_tokenizer
from ssa_jax.evaluate import loading
from ssa_jax.evaluate.cli import tokenizer_path
from ssa_jax.evaluate.sampling import Sampler
from ssa_jax.formats.tokenizer_files import check_vocab


@dataclasses.dataclass(frozen=True)
class SampleRequest:
  """A checked sample.py request: everything but the parameters."""

  source: loading.ModelSource
  tokenizer: Any
  prompts: list[str]
  prompt_ids: list[list[int]]
  max_new_tokens: int
  max_batch: int
  sampler: Sampler
  stop_ids: tuple[int, ...]


def read_prompts(prompts: Sequence[str], prompts_file: str) -> list[str]:
  """The --prompt texts, then --prompts_file's (one a line; a .jsonl file: each line's "prompt")."""
  out = list(prompts)
  if prompts_file:
    path = epath.Path(prompts_file)
    if not path.is_file():
      raise ValueError(f"--prompts_file: {prompts_file} is not a file")
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if line.strip() and path.suffix == ".jsonl":
        out.append(_jsonl_prompt(line, f"--prompts_file: {prompts_file} line {number}"))
      elif line.strip():
        out.append(line)
  if not out:
    raise ValueError("no prompt: give --prompt=TEXT (repeatable) or --prompts_file=FILE")
  return out


def _jsonl_prompt(line: str, where: str) -> str:
  try:
    prompt = json.loads(line)["prompt"]
  except (ValueError, KeyError, TypeError):
    prompt = None
  if not isinstance(prompt, str):
    raise ValueError(f'{where}: expected a JSON object with a string "prompt"')
  return prompt


def plan_sampling(*, hf_dir: str, checkpoint: str, tokenizer: str, prompts: Sequence[str], prompts_file: str,
                  max_new_tokens: int, max_batch: int, add_bos: str, sampler: Sampler) -> SampleRequest:
  """Checks a sample.py request (source, prompts, tokenizer against the model) before any parameter loads."""
  source = loading.ModelSource(hf_dir=hf_dir, checkpoint=checkpoint).validate()
  for flag, value in (("max_new_tokens", max_new_tokens), ("max_batch", max_batch)):
    if value < 1:
      raise ValueError(f"--{flag}: expected an int >= 1, got {value}")
  texts = read_prompts(prompts, prompts_file)
  tok = load_tokenizer(tokenizer_path(source, tokenizer))
  check_vocab(tok, loading.source_model_config(source).vocab_size)
  bos = {"auto": None, "true": True, "false": False}[add_bos]
  ids = [tok.encode(text, add_bos=bos) for text in texts]
  empty = [i for i, p in enumerate(ids) if not p]
  if empty:
    raise ValueError(f"prompt {empty[0]} encodes to no token: give it text, or --add_bos=true")
  return SampleRequest(source, tok, texts, ids, max_new_tokens, max_batch, sampler, (tok.eos_id,))
