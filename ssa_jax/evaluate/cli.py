"""eval.py's request checking and results writing, apart from absl so that tests can call them directly.

`plan_eval` does every check that needs no parameters (source, tasks, files, tokenizer against the model's
config, output path) so that a bad request fails in about a second with one line, before the model loads.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import ml_collections
from etils import epath

from ssa_jax.data.tokenizer import TOKENIZER_FILES, load_tokenizer
from ssa_jax.errors import ConfigError
from ssa_jax.evaluate import loading, preflight
from ssa_jax.evaluate import results as results_lib
from ssa_jax.evaluate.config import eval_config
from ssa_jax.evaluate.tasks import PASSKEY, TASKS, parse_task_names

# What a user's mistake raises (ConfigError and NotACheckpointError are among them); eval.py prints these
# as one line and exits 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, KeyError, OSError)
USAGE_EXIT = 2  # a request that cannot run (as argparse / absl flag errors)
NOTHING_RAN_EXIT = 1  # the model loaded but no task produced a result


@dataclasses.dataclass
class EvalPlan:
  """A checked request: everything run_eval needs except the parameters."""

  source: loading.ModelSource
  model_config: Any
  tokenizer: Any
  tokenizer_path: str
  names: list[str]
  passkey: ml_collections.ConfigDict
  max_length: int
  window_note: str  # one line: which window max_length is and why
  output: str  # where the results JSON goes
  output_is_default: bool  # chosen by eval.py (no --output): a failed write warns instead of failing
  missing: dict[str, str]  # tasks asked for that cannot run, with why (the others run)


def error_line(e: BaseException) -> str:
  """`error: <message>` for a user error (a KeyError's message without repr quotes)."""
  message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  return f"error: {message}"


def parse_lengths(text: str) -> tuple[int, ...]:
  """'256,512' -> (256, 512); anything else raises ValueError naming --passkey_lengths."""
  try:
    lengths = tuple(int(x) for x in text.split(",") if x.strip())
  except ValueError:
    lengths = ()
  if not lengths or min(lengths) <= 0:
    raise ValueError(f"--passkey_lengths: expected comma-separated positive ints, got {text!r}")
  return lengths


def _check_data_dir(names: list[str], data_dir: str) -> dict[str, str]:
  if data_dir and not epath.Path(data_dir).is_dir():
    raise ValueError(f"--data_dir: {data_dir} is not a directory")
  runnable, missing = preflight.runnable_tasks(names, data_dir or None)
  if not runnable:
    wanted = ", ".join(TASKS[n].filename for n in names)
    if not data_dir:
      raise ValueError(f"--data_dir: required for {', '.join(names)} (the directory holding {wanted})")
    raise ValueError(f"--data_dir: {data_dir} holds none of the files of the tasks asked for (expected {wanted})")
  return missing


def tokenizer_path(source: loading.ModelSource, tokenizer: str) -> str:
  """--tokenizer, else the source's own tokenizer; ValueError with the fix when there is none."""
  path = tokenizer or loading.source_tokenizer(source)
  if not path:
    what = (f"{source.hf_dir} holds no {' or '.join(TOKENIZER_FILES)}" if source.hf_dir else
            f"{source.checkpoint}: its run config names no tokenizer (config.data.tokenizer_path)")
    raise ValueError(f"{what}: pass --tokenizer=PATH")
  if not tokenizer and not epath.Path(path).exists():
    raise ValueError(f"{source.checkpoint or source.hf_dir}: its tokenizer {path} does not exist here: "
                     "pass --tokenizer=PATH")
  return path


def default_window(source: loading.ModelSource, model_config: Any, max_length: int) -> tuple[int, str]:
  """(window in tokens, one line saying which and why): --max_length, else the checkpoint's training window
  (its run config's train.seq_len), else the model's max_seq_len. A model trained on 128-token windows is scored
  on windows of 128, not of the 2048 positions its preset has (15 times the compute, and unlike its training)."""
  if max_length:
    return max_length, f"window: {max_length} tokens (--max_length)"
  trained = loading.source_train_seq_len(source)
  if trained and trained < model_config.max_seq_len:
    return trained, (f"window: {trained} tokens, the run's training window (config.train.seq_len; the model has "
                     f"{model_config.max_seq_len} positions; --max_length=N to choose)")
  return model_config.max_seq_len, (f"window: {model_config.max_seq_len} tokens, the model's max_seq_len "
                                    "(--max_length=N to choose)")


def plan_eval(*, hf_dir: str = "", checkpoint: str = "", tokenizer: str = "", tasks: str = "",
              data_dir: str = "", limit: int = 0, max_length: int = 0, batch_size: int = 16,
              pack_length: int = 512, passkey_lengths: str = "", passkey_trials: int = 10, passkey_seed: int = 0,
              output: str = "", dtype: str = "", vocab_slack: int = 1024) -> EvalPlan:
  """Checks a request in the order of cost (flags, files, configs, tokenizer) without loading parameters."""
  source = loading.ModelSource(hf_dir=hf_dir, checkpoint=checkpoint).validate()
  names = parse_task_names(tasks)
  if not names:
    raise ValueError(f"--tasks: no task named; expected a comma-separated list of {sorted(TASKS) + [PASSKEY]}")
  for flag, value, minimum in (("limit", limit, 0), ("max_length", max_length, 0), ("batch_size", batch_size, 1),
                               ("pack_length", pack_length, 1), ("passkey_trials", passkey_trials, 1)):
    if value < minimum:
      raise ValueError(f"--{flag}: expected an int >= {minimum}, got {value}")
  passkey = eval_config().passkey
  if PASSKEY in names:
    passkey.lengths = parse_lengths(passkey_lengths)
  passkey.trials, passkey.seed = passkey_trials, passkey_seed
  missing = _check_data_dir(names, data_dir)

  model_config = loading.source_model_config(source)
  if dtype:
    try:
      model_config = dataclasses.replace(model_config, dtype=dtype).validate()
    except ConfigError as e:
      raise ValueError(f"--dtype: {e}") from e
  tok_path = tokenizer_path(source, tokenizer)
  tok = load_tokenizer(tok_path)
  window, window_note = default_window(source, model_config, max_length)
  effective_max_length = preflight.check_options(model_config, tok, names, limit, window, passkey, vocab_slack)
  output_is_default = not output
  if output_is_default:
    output = loading.default_output(source)
  else:
    epath.Path(output).parent.mkdir(parents=True, exist_ok=True)  # an unwritable --output fails now
  return EvalPlan(source, model_config, tok, str(tok_path), names, passkey, effective_max_length, window_note,
                  output, output_is_default, missing)


def write_results(results: dict[str, Any], plan: EvalPlan) -> str | None:
  """Writes the results JSON where the plan says; returns the path, or None (with a warning) when a default
  location cannot be written. An explicit --output that cannot be written raises."""
  try:
    results_lib.write(results, plan.output)
  except OSError as e:
    if not plan.output_is_default:
      raise
    print(f"[eval] warning: could not write the results to {plan.output} ({e}); nothing was written "
          "(pass --output=PATH)", file=sys.stderr, flush=True)
    return None
  return plan.output
