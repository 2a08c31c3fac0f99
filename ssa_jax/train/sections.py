"""The run config's train and eval sections as typed, frozen values, built and validated once, each error naming
the field (`config.train.warmup_steps: expected an int >= 0, got -1`); a field's type and bounds are declared on
the dataclass. The ConfigDict stays the run's record (WORKDIR/config.json, the resume comparison); the loop, the
optimizer and the evaluation read these sections. ssa_jax.data.config validates the data section.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ssa_jax.errors import ConfigError
from ssa_jax.evaluate.tasks import TASKS

SCHEDULES = ("cosine", "constant")


def _at_least(minimum: float, below: float | None = None) -> Any:
  return dataclasses.field(metadata={"min": minimum, "below": below})


def _checked(where: str, kind: str, value: Any, bounds: Mapping[str, float]) -> Any:
  """`value` as a `kind` ('int', 'float', 'bool', 'str') within `bounds`, else a ConfigError naming `where`."""
  low, below = bounds.get("min"), bounds.get("below")
  if kind == "bool" or kind == "str":
    if not isinstance(value, bool if kind == "bool" else str):
      raise ConfigError(f"{where}: expected {'True or False' if kind == 'bool' else 'a string'}, got {value!r}")
    return value
  types = (int,) if kind == "int" else (int, float)
  in_bounds = isinstance(value, types) and not isinstance(value, bool) and (low is None or value >= low) and (
      below is None or value < below)
  if not in_bounds:
    what = "an int" if kind == "int" else "a number"
    bound = f"in [{low:g}, {below:g})" if below is not None else f">= {low:g}"
    raise ConfigError(f"{where}: expected {what} {bound}, got {value!r}")
  return value if kind == "int" else float(value)


def _parse(cls: type, section: str, given: Mapping[str, Any], strict: bool = True) -> dict[str, Any]:
  """The values of `cls`'s fields in `given` (config.<section>), each checked; `strict`: no other field."""
  names = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(given.keys()) - set(names)) if strict else []
  if unknown:
    raise ConfigError(f"config.{section}.{unknown[0]}: not a field of config.{section} (its fields: "
                      f"{', '.join(names)})")
  missing = [name for name in names if name not in given]
  if missing:
    raise ConfigError(f"config.{section}.{missing[0]}: required (configs/base.py sets it)")
  return {f.name: _checked(f"config.{section}.{f.name}", f.type, given[f.name], f.metadata)
          for f in dataclasses.fields(cls)}


@dataclasses.dataclass(frozen=True)
class OptimSection:
  """The optimizer's and the schedule's fields of config.train (what optim.make_optimizer reads)."""

  lr: float = _at_least(0.0)
  warmup_steps: int = _at_least(0)
  steps: int = _at_least(1)
  schedule: str = dataclasses.field()  # one of SCHEDULES
  min_lr_ratio: float = _at_least(0.0)
  b1: float = _at_least(0.0, below=1.0)  # Adam's decay rates
  b2: float = _at_least(0.0, below=1.0)
  eps: float = _at_least(1e-30)
  weight_decay: float = _at_least(0.0)
  grad_clip: float = _at_least(0.0)  # 0 = no clipping
  temperature_scalar_lr_multiplier: float = _at_least(0.0)
  temperature_matrix_lr_multiplier: float = _at_least(0.0)
  temperatures_only: bool = dataclasses.field()

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ConfigError(f"config.train.schedule: unknown {self.schedule!r}; expected one of {SCHEDULES}")


@dataclasses.dataclass(frozen=True)
class TrainSection(OptimSection):
  """config.train (configs/base.py says what each field means): the optimizer's fields and the run's."""

  global_batch_size: int = _at_least(1)
  seq_len: int = _at_least(1)
  microbatches: int = _at_least(1)
  loss_chunk_size: int = _at_least(0)  # positions per LM-head chunk of the loss; 0 = the whole logits at once
  log_every: int = _at_least(1)
  eval_every: int = _at_least(0)  # 0 = validation at the end only
  eval_batches: int = _at_least(0)  # 0 = no validation
  checkpoint_every: int = _at_least(0)  # 0 = a checkpoint at the end only
  checkpoint_every_minutes: float = _at_least(0.0)  # 0 = no checkpoints by time
  keep_checkpoints: int = _at_least(1)
  async_checkpoints: bool = dataclasses.field()
  max_nonfinite_steps: int = _at_least(1)
  tensorboard: bool = dataclasses.field()
  preemption_deadline_s: float = _at_least(0.0)  # 0 = none
  layer_norms: bool = dataclasses.field()
  profile_start_step: int = _at_least(0)
  profile_num_steps: int = _at_least(0)  # 0 = no profile
  wandb: bool = dataclasses.field()
  wandb_project: str = dataclasses.field()
  wandb_entity: str = dataclasses.field()
  wandb_name: str = dataclasses.field()
  zero_shot_every: int = _at_least(0)  # 0 = no zero-shot tasks during training
  zero_shot_tasks: str = dataclasses.field()  # names of TASKS, comma-separated; see `zero_shot_task_names`
  zero_shot_limit: int = _at_least(0)  # 0 = every document

  def __post_init__(self):
    super().__post_init__()
    unknown = [name for name in self.zero_shot_task_names if name not in TASKS]
    if unknown:
      raise ConfigError(f"config.train.zero_shot_tasks: unknown task(s) {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(TASKS))} (comma-separated)")
    if self.zero_shot_every > 0 and not self.zero_shot_task_names:
      raise ConfigError(f"config.train.zero_shot_tasks: required when config.train.zero_shot_every="
                        f"{self.zero_shot_every} (> 0): name one or more of {', '.join(sorted(TASKS))}, or pass "
                        f"--config.train.zero_shot_every=0")

  @property
  def tokens_per_step(self) -> int:
    return self.global_batch_size * self.seq_len

  @property
  def zero_shot_task_names(self) -> list[str]:
    """config.train.zero_shot_tasks as a list, blanks dropped, each name once."""
    return list(dict.fromkeys(name.strip() for name in self.zero_shot_tasks.split(",") if name.strip()))


def train_section(train: Mapping[str, Any]) -> TrainSection:
  """config.train as a TrainSection, every field checked."""
  return TrainSection(**_parse(TrainSection, "train", train))


def optim_section(train: Mapping[str, Any] | OptimSection) -> OptimSection:
  """The optimizer's fields of a section (a TrainSection is one), or of a config.train mapping: checked, other
  fields ignored, so that a mapping of the optimizer's fields alone will do."""
  if isinstance(train, OptimSection):
    return train
  return OptimSection(**_parse(OptimSection, "train", train, strict=False))


@dataclasses.dataclass(frozen=True)
class EvalSection:
  """config.eval: the end-of-run evaluation into WORKDIR/results.json (see eval.py for the tasks)."""

  at_end: bool = dataclasses.field()
  tasks: str = dataclasses.field()  # lm-eval task names, comma-separated ('' = none); see `task_names`
  data_dir: str = dataclasses.field()
  limit: int = _at_least(0)  # 0 = every example
  batch_size: int = _at_least(1)
  passkey: bool = dataclasses.field()
  heldout_split: str = dataclasses.field()  # '' = no held-out perplexity

  @property
  def task_names(self) -> list[str]:
    return [t for t in self.tasks.split(",") if t]


def eval_section(ev: Mapping[str, Any]) -> EvalSection:
  """config.eval as an EvalSection, every field checked."""
  return EvalSection(**_parse(EvalSection, "eval", ev))


def schedule_warnings(t: TrainSection) -> list[str]:
  """One line for each cadence longer than the run (a preset shrunk with --config.train.steps=N keeps its
  full-size schedule): a warmup that never reaches the peak, no validation or checkpoint before the end."""
  out = []
  if t.warmup_steps >= t.steps and t.warmup_steps > 0:
    out.append(f"config.train.warmup_steps: {t.warmup_steps} >= config.train.steps={t.steps}: the learning rate "
               f"never reaches config.train.lr={t.lr:g} (pass --config.train.warmup_steps=N with N < {t.steps})")
  cadences = {"eval_every": "validation before the end", "checkpoint_every": "checkpoint before the last step",
              "zero_shot_every": "zero-shot pass"}
  for field, missed in cadences.items():
    if getattr(t, field) > t.steps:
      out.append(f"config.train.{field}: {getattr(t, field)} > config.train.steps={t.steps}: no {missed} (pass "
                 f"--config.train.{field}=N with N <= {t.steps})")
  return out
