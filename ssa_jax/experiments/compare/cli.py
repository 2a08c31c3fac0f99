"""One command for the paper's pre-training comparison (Figure 4, Table 3): SSA variants vs vanilla, over seeds.

  python -m ssa_jax.experiments.compare --config=configs/compare_tiny.py --variants=vanilla,ssa,ssa_ws \
      --seeds=0,1 --workdir=runs/compare [--config.train.steps=300] [--eval_tasks=piqa --eval_data_dir=DIR]

Every variant x seed trains with `ssa_jax.train.loop.train` into WORKDIR/runs/<variant>_seed<seed>/, on the
given config with three fields changed: config.model.ssa (the variant's SSA preset, configs/models.py
SSA_VARIANTS, applied on top of the config's own SSA section, so --config.model.ssa.* overrides reach every SSA
variant), config.model.attention_kind (its attention method, ATTENTION_VARIANTS: a name such as `ssa+gated` joins
one of each with '+'; none is 'softmax') and config.seed (the initialisation). The data section is left alone:
every run reads the same training batches in the same order and is validated on the same batches, with the same
token budget.

A run already in WORKDIR resumes from its checkpoint, and a complete one is not trained again, so an
interrupted comparison (Ctrl-C saves a checkpoint) continues when the same command is run again; a run
directory that was started with a different config is refused. Then each final checkpoint is analysed
(analysis.py: parameters, Figure 2's norms and spikiness, per-layer temperatures, zero-shot tasks) and
WORKDIR/report.md, report.json and PNGs are written (report.py, markdown.py, figures.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from configs import models
from ssa_jax.errors import ConfigError
from ssa_jax.experiments.compare import analysis as compare_analysis
from ssa_jax.experiments.compare import figures as compare_figures
from ssa_jax.experiments.compare import report as compare_report
from ssa_jax.experiments.compare.markdown import markdown
from ssa_jax.train.loop import train

RUN_STATE = "compare_run.json"  # in each run directory: the config it was started with, its sessions, its summary


def parse_list(text: str, flag: str, cast=str) -> list:
  """'a,b' -> [cast(a), cast(b)] without duplicates; an empty list or a bad item names the flag."""
  items = [s.strip() for s in str(text).split(",") if s.strip()]
  try:
    values = list(dict.fromkeys(cast(s) for s in items))
  except ValueError as e:
    raise ConfigError(f"--{flag}: expected a comma-separated list of {cast.__name__}, got {text!r}") from e
  if not values:
    raise ConfigError(f"--{flag}: expected at least one value, got {text!r}")
  return values


def variant_parts(variant: str) -> tuple[str, str]:
  """(SSA preset, attention_kind) of a variant name: '+'-joined parts, at most one from configs/models.py
  SSA_VARIANTS ('vanilla' when none) and one from ATTENTION_VARIANTS ('softmax' when none), e.g. 'ssa+gated'."""
  expected = (f"expected '+'-joined names from configs/models.py, at most one of SSA_VARIANTS "
              f"{sorted(models.SSA_VARIANTS)} and one of ATTENTION_VARIANTS {sorted(models.ATTENTION_VARIANTS)}")
  ssa, attention = [], []
  for part in variant.split("+"):
    if part in models.SSA_VARIANTS:
      ssa.append(part)
    elif part in models.ATTENTION_VARIANTS:
      attention.append(models.ATTENTION_VARIANTS[part])
    else:
      where = f" in {variant!r}" if "+" in variant else ""
      raise ConfigError(f"--variants: unknown variant {part!r}{where}; {expected}")
  if len(ssa) > 1 or len(attention) > 1:
    raise ConfigError(f"--variants: {variant!r} has more than one SSA or attention part; {expected}")
  return (ssa or ["vanilla"])[0], (attention or ["softmax"])[0]


def variant_config(base: ml_collections.ConfigDict, variant: str, seed: int) -> ml_collections.ConfigDict:
  """`base` with config.model.ssa updated by the variant's SSA preset, config.model.attention_kind set by its
  attention part and config.seed = seed (a private copy)."""
  ssa_preset, attention_kind = variant_parts(variant)
  config = ml_collections.ConfigDict(base.to_dict())
  ssa = config.model.ssa
  for key, value in models.SSA_DEFAULTS.items():  # a field the given config's section lacks gets its default
    if key not in ssa:
      ssa[key] = value
  ssa.update(models.SSA_VARIANTS[ssa_preset])
  config.model.attention_kind = attention_kind  # every variant names its method: none is 'softmax'
  config.seed = int(seed)
  # The final checkpoints are evaluated by this command (--eval_tasks), once, after all runs have trained.
  config.eval.at_end = False
  return config


def first_difference(a: Any, b: Any, path: str = "config") -> str | None:
  """The first field present in both JSON values where they differ, as 'config.a.b: x vs y', or None (a field
  only one side has, as when the code gained or lost a config field between two sessions, is no difference)."""
  if isinstance(a, dict) and isinstance(b, dict):
    for key in sorted(set(a) & set(b)):
      found = first_difference(a[key], b[key], f"{path}.{key}")
      if found:
        return found
    return None
  short = lambda v: repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."  # noqa: E731
  return None if a == b else f"{path}: {short(a)} vs {short(b)}"


def write_state(run_dir: Path, state: dict) -> None:
  """Writes RUN_STATE through a temporary file (a crash leaves the old or the new one, never half)."""
  run_dir.mkdir(parents=True, exist_ok=True)
  tmp = run_dir / (RUN_STATE + ".tmp")
  tmp.write_text(json.dumps(state, indent=1) + "\n")
  tmp.replace(run_dir / RUN_STATE)


def ensure_trained(run_dir: Path, config: ml_collections.ConfigDict, variant: str, seed: int) -> dict:
  """Trains (or resumes) one run unless it is complete; returns its state. A requested stop leaves it incomplete."""
  wanted = json.loads(config.to_json_best_effort())  # plain JSON values (tuples become lists), as stored
  path = run_dir / RUN_STATE
  state = json.loads(path.read_text()) if path.is_file() else None
  if state is not None:
    diff = first_difference(state["config"], wanted)
    if diff:
      raise ConfigError(f"{run_dir} was started with another config ({diff}, stored vs now): use a new "
                        f"--workdir, or delete {run_dir} to train it again")
    if state["complete"]:
      print(f"[compare] {run_dir.name}: complete at step {state['summary']['step']}, not trained again", flush=True)
      return state
  else:
    state = {"variant": variant, "seed": seed, "config": wanted, "sessions": [], "summary": None, "complete": False}
    write_state(run_dir, state)
  print(f"[compare] {run_dir.name}: training{' (resuming)' if state['sessions'] else ''}", flush=True)
  start = time.time()
  summary = train(config, str(run_dir))
  state["sessions"].append({"wall_s": time.time() - start, "end_step": summary["step"],
                            "stopped": summary.get("stopped")})
  state["summary"] = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, type(None)))}
  state["complete"] = not summary.get("stopped")
  write_state(run_dir, state)
  print(f"[compare] {run_dir.name}: step {summary['step']} after {state['sessions'][-1]['wall_s']:.1f} s", flush=True)
  return state


def compare(base: ml_collections.ConfigDict, variants: list[str], seeds: list[int], workdir: str,
            eval_tasks: str = "", eval_data_dir: str = "", limit: int = 0, eval_batch_size: int = 16,
            analysis_tokens: int = 2048, config_name: str = "") -> dict | None:
  """Trains every variant x seed, analyses the final checkpoints, writes the report; returns it (None: stopped)."""
  if len(variants) < 2:
    raise ConfigError(f"--variants: a comparison needs at least two variants, got {variants}")
  if int(base.train.eval_batches) <= 0:
    raise ConfigError("config.train.eval_batches: expected > 0; the comparison is of validation perplexity")
  # Seed-major order: an interrupted comparison has every variant of the first seeds before the later seeds.
  plans = [(v, s, variant_config(base, v, s)) for s in seeds for v in variants]  # every name checked first
  root = Path(workdir)
  runs = []
  for variant, seed, config in plans:
    run_dir = root / "runs" / f"{variant}_seed{seed}"
    state = ensure_trained(run_dir, config, variant, seed)
    if not state["complete"]:
      print(f"[compare] stopped during {run_dir.name} ({state['sessions'][-1]['stopped']}); run the same "
            "command again to continue the comparison", file=sys.stderr, flush=True)
      return None
    runs.append({"name": run_dir.name, "variant": variant, "seed": seed, "dir": str(run_dir), "state": state})
  for run in runs:
    run["analysis"] = compare_analysis.analyse_run(
        Path(run["dir"]), analysis_tokens, eval_tasks, eval_data_dir, limit, eval_batch_size)
  report = compare_report.build(runs, variants, seeds, config_name)
  (root / "report.json").write_text(json.dumps(report, indent=1) + "\n")
  (root / "report.md").write_text(markdown(report, compare_figures.write_all(root, report, runs)))
  print(compare_report.console_summary(report), flush=True)
  print(f"[compare] wrote {root / 'report.md'}, {root / 'report.json'} and the figures beside them", flush=True)
  return report


def main(argv: list[str]) -> None:
  """The command line (absl flags; see the module docstring)."""
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  f = flags.FLAGS
  if not f.workdir:
    raise ConfigError("--workdir: required (the comparison's runs, report.md and figures go there)")
  report = compare(
      f.config, parse_list(f.variants, "variants"), parse_list(f.seeds, "seeds", int), f.workdir,
      eval_tasks=f.eval_tasks, eval_data_dir=f.eval_data_dir, limit=f.limit, eval_batch_size=f.eval_batch_size,
      analysis_tokens=f.analysis_tokens, config_name=config_flags.get_config_filename(f["config"]))
  if report is None:
    sys.exit(130)


def define_flags() -> None:
  """The command's flags (absl); --config.* overrides come from config_flags."""
  config_flags.DEFINE_config_file("config", "configs/compare_tiny.py", "Base run config (a file in configs/).")
  flags.DEFINE_string("workdir", None, "Directory for the runs (WORKDIR/runs/<variant>_seed<seed>) and the report.")
  flags.DEFINE_string("variants", "vanilla,ssa,ssa_ws",
                      "Comma-separated variants: SSA presets and attention methods of configs/models.py "
                      "(SSA_VARIANTS, ATTENTION_VARIANTS), one of each joined by '+' (e.g. 'ssa+gated'); the "
                      "first ('vanilla' if given) is the reference of the ratios and the verdict.")
  flags.DEFINE_string("seeds", "0,1", "Comma-separated initialisation seeds (config.seed); the data order is shared.")
  flags.DEFINE_string("eval_tasks", "", "Zero-shot tasks for every final checkpoint (eval.py's names), e.g. "
                      "'piqa,arc_easy'; '' = none.")
  flags.DEFINE_string("eval_data_dir", "", "Directory holding the task files (see eval.py).")
  flags.DEFINE_integer("limit", 0, "First N documents of each task; 0 = all.")
  flags.DEFINE_integer("eval_batch_size", 16, "Rows per evaluation batch.")
  flags.DEFINE_integer("analysis_tokens", 2048, "Validation tokens for the norms / spikiness / temperature analysis.")
