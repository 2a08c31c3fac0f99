"""Checks of an evaluation request that need the model's config but not its parameters (run_eval applies
`check_options`; eval.py also `runnable_tasks`, before loading the model: a bad request costs a second)."""

from __future__ import annotations

from typing import Any

import ml_collections
from etils import epath

from ssa_jax.evaluate.tasks import PASSKEY, TASKS
from ssa_jax.formats.tokenizer_files import check_vocab


def check_options(model_config, tokenizer, names: list[str], limit: Any = None, max_length: int | None = None,
                  passkey: ml_collections.ConfigDict | None = None, vocab_slack: int = 1024) -> int:
  """Validates the request against the model's config; returns the effective max_length."""
  if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
    raise ValueError(f"limit: expected an int >= 0 (0: every document), got {limit!r}")
  check_vocab(tokenizer, model_config.vocab_size, vocab_slack)
  max_length = int(max_length or model_config.max_seq_len)
  if max_length <= 0:
    raise ValueError(f"max_length: expected a positive int, got {max_length}")
  if model_config.learned_positions and max_length > model_config.max_seq_len:
    raise ValueError(f"max_length={max_length} exceeds the model's {model_config.max_seq_len} learned positions")
  if PASSKEY in names and passkey is not None:  # the first passkey setting that cannot run
    lengths = tuple(passkey.lengths)
    if not lengths or not all(isinstance(L, int) and not isinstance(L, bool) and L > 0 for L in lengths):
      raise ValueError(f"passkey lengths: expected one or more positive ints, got {lengths!r}")
    for field in ("trials", "max_new_tokens", "depth_buckets", "digits"):
      value = passkey[field]
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"passkey {field}: expected an int >= 1, got {value!r}")
  return max_length


def missing_file(name: str, data_dir: str | None) -> str | None:
  """Why file task `name` cannot run (no --data_dir, or its file is not under it), or None when it can."""
  spec = TASKS[name]
  if not data_dir:
    return f"task {name}: no --data_dir given (expected {spec.filename} under it)"
  path = epath.Path(data_dir) / spec.filename
  return None if path.exists() else f"task {name}: file {path} not found (expected {spec.filename} under --data_dir)"


def runnable_tasks(names: list[str], data_dir: str | None) -> tuple[list[str], dict[str, str]]:
  """(tasks whose file is there or that need none, {task: why it cannot run}) for the names given."""
  missing = {n: missing_file(n, data_dir) for n in names if n != PASSKEY}
  missing = {n: why for n, why in missing.items() if why}
  return [n for n in names if n not in missing], missing
