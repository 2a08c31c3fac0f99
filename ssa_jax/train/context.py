"""The run context: what a training run builds from its config before the first compile, typed, handed to
the loop, the validation reads (evaluation.py) and the end-of-run evaluation (final_eval.py)."""

from __future__ import annotations

import dataclasses

import ml_collections
from etils import epath
from jax.sharding import Mesh

from ssa_jax.data.tokenizer import Tokenizer
from ssa_jax.model.config import ModelConfig
from ssa_jax.train.sections import EvalSection, TrainSection


@dataclasses.dataclass(frozen=True)
class RunContext:
  """A run's checked config and what it placed: the typed sections, the mesh and the tokenizer."""

  config: ml_collections.ConfigDict  # the run's record (WORKDIR/config.json); data paths resolved by attach_data
  train: TrainSection
  eval: EvalSection
  workdir: epath.Path | None  # None for a dry run (nothing is written)
  model_cfg: ModelConfig  # the frequency term's feature_path resolved ('demo' -> the counts file)
  mesh: Mesh
  rules: tuple[tuple[str, str | None], ...]  # logical axis -> mesh axis
  tokenizer: Tokenizer | None  # None until attach_data; in a dry run, None when it could not be loaded
  # Dry run: checks that need files a dry run does not require (the corpus, the HF checkpoint), one line each.
  unchecked: list[str] = dataclasses.field(default_factory=list)
  tokenizer_checked: bool = True  # dry run: False when the tokenizer's vocab size could not be compared
  warnings: list[str] = dataclasses.field(default_factory=list)  # one line each, said at start (schedule_warnings)

  @property
  def data(self) -> ml_collections.ConfigDict:
    """config.data (validated by ssa_jax.data.config; the data pipeline reads this section)."""
    return self.config.data
