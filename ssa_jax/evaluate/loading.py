"""Model sources for evaluation: a Hugging Face directory or an orbax checkpoint (root, step dir, workdir)."""

from __future__ import annotations

import dataclasses
from typing import Any

from etils import epath


@dataclasses.dataclass(frozen=True)
class ModelSource:
  """Exactly one of `hf_dir` / `checkpoint`."""

  hf_dir: str = ""
  checkpoint: str = ""

  def validate(self) -> "ModelSource":
    if bool(self.hf_dir) == bool(self.checkpoint):
      raise ValueError("give exactly one model source: --hf_dir=DIR or --checkpoint=WORKDIR_OR_STEP_DIR")
    return self


def _tokenizer_in(directory: epath.Path) -> str | None:
  for name in ("tokenizer.json", "tokenizer.model"):
    if (directory / name).exists():
      return str(directory / name)
  return None


def load_model(source: ModelSource) -> tuple[Any, Any, str | None]:
  """(model, params, tokenizer path or None) from `source`; a directory that is not one fails at once."""
  source.validate()
  if source.hf_dir:
    from ssa_jax.hf import from_hf

    model, params = from_hf(source.hf_dir)
    return model, params, _tokenizer_in(epath.Path(source.hf_dir))
  from ssa_jax import checkpoint

  model, params, run_config = checkpoint.load_model(source.checkpoint)
  tok = (run_config.get("data") or {}).get("tokenizer_path") or None
  return model, params, tok


def source_info(source: ModelSource) -> dict[str, Any]:
  """What the results record about the source: path, step (checkpoints), kind."""
  if source.hf_dir:
    return {"hf_dir": str(source.hf_dir), "checkpoint": None, "step": None}
  from ssa_jax import checkpoint

  root, step = checkpoint.resolve_step_dir(source.checkpoint)
  return {"hf_dir": None, "checkpoint": str(root), "step": step}


def check_vocab(tokenizer, model_vocab: int, slack: int = 1024) -> None:
  """Fails unless the model's vocabulary covers the tokenizer's (padded by at most `slack` rows)."""
  if tokenizer.vocab_size > model_vocab:
    raise ValueError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens but the model's vocabulary "
                     f"has only {model_vocab}: they do not belong together (pass the model's own --tokenizer)")
  if model_vocab - tokenizer.vocab_size > slack:
    raise ValueError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens, the model's vocabulary "
                     f"{model_vocab}: more than {slack} rows apart, so this is not the model's tokenizer "
                     "(pass the right --tokenizer)")
