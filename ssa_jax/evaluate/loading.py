"""Model sources for evaluation: a Hugging Face directory or an orbax checkpoint (root, step dir, workdir).

Everything eval needs to check a request (the model's config, its tokenizer, where results go) is read
here without loading the parameters, so that a bad request fails before the slow part.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from etils import epath

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


@dataclasses.dataclass(frozen=True)
class ModelSource:
  """Exactly one of `hf_dir` / `checkpoint`."""

  hf_dir: str = ""
  checkpoint: str = ""

  def validate(self) -> "ModelSource":
    if bool(self.hf_dir) == bool(self.checkpoint):
      raise ValueError("give exactly one model source: --hf_dir=DIR or --checkpoint=WORKDIR_OR_STEP_DIR")
    return self


def tokenizer_in(directory: epath.PathLike) -> str | None:
  """The tokenizer.json / tokenizer.model file in `directory`, or None."""
  directory = epath.Path(directory)
  for name in TOKENIZER_FILES:
    if (directory / name).exists():
      return str(directory / name)
  return None


def run_config_tokenizer(run_config: dict[str, Any]) -> str | None:
  """The tokenizer a run config names: config.data.tokenizer_path, else the demo BPE of a demo run, else the
  tokenizer in config.init.hf_dir (a fine-tune or an imported model); None when it names none."""
  data = run_config.get("data") or {}
  if data.get("tokenizer_path"):
    return str(data["tokenizer_path"])
  if data.get("demo"):
    from ssa_jax.data import demo

    cache = str(epath.Path(data.get("cache_dir") or "~/.cache/ssa_jax").expanduser())
    return demo.ensure_demo_tokenizer(cache, int(data.get("demo_vocab_size", 2048)))
  hf_dir = (run_config.get("init") or {}).get("hf_dir")
  if hf_dir and epath.Path(hf_dir).exists():
    return tokenizer_in(hf_dir)
  return None


def source_tokenizer(source: ModelSource) -> str | None:
  """The tokenizer that belongs to `source` (its directory's / its run config's), or None."""
  source.validate()
  if source.hf_dir:
    return tokenizer_in(source.hf_dir)
  from ssa_jax import checkpoint

  return run_config_tokenizer(checkpoint.read_config(source.checkpoint))


def source_model_config(source: ModelSource):
  """The ModelConfig of `source`, read from its config alone (no parameters are loaded)."""
  source.validate()
  if source.hf_dir:
    from ssa_jax.hf import config_from_hf, read_hf_config

    return config_from_hf(read_hf_config(source.hf_dir), where=f"{source.hf_dir}/config.json")
  from ssa_jax import checkpoint
  from ssa_jax.config import model_config_from_dict

  root, step = checkpoint.resolve_step_dir(source.checkpoint)
  return model_config_from_dict(checkpoint.read_config(source.checkpoint)["model"], where=f"{root}/{step}/config")


def default_output(source: ModelSource) -> str:
  """Where eval.py writes results when --output is not given: beside the model, one file per checkpoint step.

  A training workdir: WORKDIR/eval_results_step{N}.json (beside the run's own results.json); another
  checkpoint directory: ROOT/eval_results_step{N}.json; a Hugging Face directory: HF_DIR/eval_results.json.
  """
  source.validate()
  if source.hf_dir:
    return str(epath.Path(source.hf_dir) / "eval_results.json")
  from ssa_jax import checkpoint

  root, step = checkpoint.resolve_step_dir(source.checkpoint)
  home = root.parent if root.name == "checkpoints" else root
  return str(home / f"eval_results_step{step}.json")


def load_model(source: ModelSource) -> tuple[Any, Any, str | None]:
  """(model, params, tokenizer path or None) from `source`; a directory that is not one fails at once."""
  source.validate()
  if source.hf_dir:
    from ssa_jax.hf import from_hf

    model, params = from_hf(source.hf_dir)
    return model, params, tokenizer_in(source.hf_dir)
  from ssa_jax import checkpoint

  model, params, run_config = checkpoint.load_model(source.checkpoint)
  return model, params, run_config_tokenizer(run_config)


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
