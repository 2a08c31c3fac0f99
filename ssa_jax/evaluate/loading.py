"""Model sources for evaluation: a Hugging Face directory or an orbax checkpoint (root, step dir, workdir).

Everything eval needs to check a request (the model's config, its tokenizer, where results go) is read
here without loading the parameters, so that a bad request fails before the slow part.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from etils import epath

from ssa_jax.data.tokenizer import tokenizer_in
from ssa_jax.formats import checkpoint
from ssa_jax.formats.hf import config_from_hf, from_hf, is_training_workdir, read_hf_config
from ssa_jax.formats.tokenizer_files import run_config_tokenizer
from ssa_jax.model.config import model_config_from_dict


@dataclasses.dataclass(frozen=True)
class ModelSource:
  """Exactly one of `hf_dir` / `checkpoint`."""

  hf_dir: str = ""
  checkpoint: str = ""

  def validate(self) -> "ModelSource":
    """Self, or ValueError: not exactly one source, or a directory passed as the other kind (named, with the fix)."""
    if bool(self.hf_dir) == bool(self.checkpoint):
      raise ValueError("give exactly one model source: --hf_dir=DIR or --checkpoint=WORKDIR_OR_STEP_DIR")
    if self.hf_dir and is_training_workdir(self.hf_dir):
      raise ValueError(f"--hf_dir: {self.hf_dir} is an ssa-jax training workdir (its config.json is a run config, "
                       f"its checkpoints are in checkpoints/), not a Hugging Face directory: pass "
                       f"--checkpoint={self.hf_dir}")
    if self.checkpoint and _is_hf_dir(self.checkpoint):
      raise ValueError(f"--checkpoint: {self.checkpoint} is a Hugging Face directory (its config.json is a "
                       f"transformers config), not an ssa-jax checkpoint: pass --hf_dir={self.checkpoint}")
    return self


def _is_hf_dir(path: str) -> bool:
  """A directory whose config.json is a transformers config (it names its model_type or architectures)."""
  config = epath.Path(path) / "config.json"
  if (epath.Path(path) / "checkpoints").exists() or not config.is_file():
    return False
  try:
    obj = json.loads(config.read_text())
  except ValueError:
    return False
  return isinstance(obj, dict) and ("model_type" in obj or "architectures" in obj)


def source_tokenizer(source: ModelSource) -> str | None:
  """The tokenizer that belongs to `source` (its directory's / its run config's), or None."""
  source.validate()
  if source.hf_dir:
    return tokenizer_in(source.hf_dir)
  return run_config_tokenizer(checkpoint.read_config(source.checkpoint))


def source_model_config(source: ModelSource):
  """The ModelConfig of `source`, read from its config alone (no parameters are loaded)."""
  source.validate()
  if source.hf_dir:
    return config_from_hf(read_hf_config(source.hf_dir), where=f"{source.hf_dir}/config.json")
  root, step = checkpoint.resolve_step_dir(source.checkpoint)
  return model_config_from_dict(checkpoint.read_config(source.checkpoint)["model"], where=f"{root}/{step}/config")


def source_train_seq_len(source: ModelSource) -> int | None:
  """The window the checkpoint's run trained on (its run config's train.seq_len); None for a Hugging Face
  directory or a checkpoint whose run config does not record one."""
  source.validate()
  if source.hf_dir:
    return None
  seq_len = (checkpoint.read_config(source.checkpoint).get("train") or {}).get("seq_len")
  return seq_len if isinstance(seq_len, int) and not isinstance(seq_len, bool) and seq_len > 0 else None


def default_output(source: ModelSource) -> str:
  """Where eval.py writes results when --output is not given: beside the model, one file per checkpoint step.

  A training workdir: WORKDIR/eval_results_step{N}.json (beside the run's own results.json); another
  checkpoint directory: ROOT/eval_results_step{N}.json; a Hugging Face directory: HF_DIR/eval_results.json.
  """
  source.validate()
  if source.hf_dir:
    return str(epath.Path(source.hf_dir) / "eval_results.json")
  root, step = checkpoint.resolve_step_dir(source.checkpoint)
  home = root.parent if root.name == "checkpoints" else root
  return str(home / f"eval_results_step{step}.json")


def load_model(source: ModelSource) -> tuple[Any, Any, str | None]:
  """(model, variables, tokenizer path or None) from `source`; a directory that is not one fails at once."""
  source.validate()
  if source.hf_dir:
    model, variables = from_hf(source.hf_dir)
    return model, variables, tokenizer_in(source.hf_dir)
  model, variables, run_config = checkpoint.load_model(source.checkpoint)
  return model, variables, run_config_tokenizer(run_config)


def source_info(source: ModelSource) -> dict[str, Any]:
  """What the results record about the source: path, step (checkpoints), kind."""
  if source.hf_dir:
    return {"hf_dir": str(source.hf_dir), "checkpoint": None, "step": None}
  root, step = checkpoint.resolve_step_dir(source.checkpoint)
  return {"hf_dir": None, "checkpoint": str(root), "step": step}
