"""A training run's start-up checks, in order: check_config (fields and files), attach_data (the tokenizer),
check_workdir (resume, refuse, or complete), check_validation. Each refusal is one line naming the field
(`ConfigError`), before anything is written; a dry run lists what it could not check in RunContext.unchecked."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import ml_collections
from etils import epath

from ssa_jax.data.config import resolve_paths, validate_data_config
from ssa_jax.data.demo_counts import DEMO_FEATURE_PATH, ensure_demo_token_counts
from ssa_jax.data.pipeline import resolve_num_streams
from ssa_jax.data.tokenizer import load_tokenizer
from ssa_jax.errors import ConfigError
from ssa_jax.evaluate.preflight import missing_file
from ssa_jax.formats import checkpoint
from ssa_jax.formats.hf import config_from_hf, read_hf_config
from ssa_jax.model.config import ModelConfig, model_config_from_dict
from ssa_jax.model.decoder import uses_token_feature
from ssa_jax.runtime import distributed, sharding
from ssa_jax.runtime.accelerator_check import warn_if_accelerator_unused
from ssa_jax.runtime.gcs import TENSORBOARD, require_gcs
from ssa_jax.train.context import RunContext
from ssa_jax.train.evaluation import has_a_batch
from ssa_jax.train.metrics import log
from ssa_jax.train.sections import EvalSection, TrainSection, eval_section, schedule_warnings, train_section

SUMMARY_NAME = "summary.json"  # WORKDIR/summary.json: the summary of the run's last session (train.py prints it)

# Fields a run may change when it resumes from a workdir's checkpoint (a dotted name, or a whole section): how
# the run proceeds, is logged, evaluated or placed on devices, not what it trains (steps: extend a finished run;
# data.path: the same corpus moved, the data iterator refusing a layout that does not fit its state; the mesh: a
# checkpoint restores onto any device count; init: read at step 0 only). Every other field must be the
# checkpoint's: a run with another value is another run (another --workdir).
RESUMABLE_FIELDS = (
    "train.steps", "train.log_every", "train.eval_every", "train.eval_batches", "train.checkpoint_every",
    "train.keep_checkpoints", "train.async_checkpoints", "train.tensorboard", "train.preemption_deadline_s",
    "train.max_nonfinite_steps", "train.microbatches", "train.loss_chunk_size", "train.layer_norms",
    "train.profile_start_step", "train.profile_num_steps", "train.wandb", "train.wandb_project",
    "train.wandb_entity", "train.wandb_name", "train.checkpoint_every_minutes", "train.zero_shot_every",
    "train.zero_shot_tasks", "train.zero_shot_limit",
    "model.dtype", "model.remat", "model.attention_impl", "model.splash_block_q", "model.splash_block_kv",
    "data.path", "data.cache_dir", "data.num_threads", "data.prefetch", "data.validation_split",
    "eval", "distributed", "mesh", "sharding", "init",
)

_DATA_PATH_REQUIRED = ("config.data.path: required (a SlimPajama / parquet / jsonl / txt directory or file, "
                       "local or gs://); set config.data.demo=True for the offline demo corpus")


def _tokenizer_required(config: ml_collections.ConfigDict) -> str:
  hf_dir = config.init.get("hf_dir") or ""
  example = f"--config.data.tokenizer_path={hf_dir} (the checkpoint's own)" if hf_dir else \
      "--config.data.tokenizer_path=DIR_OR_tokenizer.json"
  return ("config.data.tokenizer_path: required outside demo mode (config.data.demo=False): the tokenizer of "
          f"config.data.path's text, a tokenizer.json, a SentencePiece .model or a directory holding one, e.g. "
          f"{example}; the demo's {config.data.demo_vocab_size}-token BPE fits the demo corpus only")


# -- data: the corpus and its tokenizer -------------------------------------------------------------------
def _check_data_named(config: ml_collections.ConfigDict, dry_run: bool, unchecked: list[str]) -> None:
  """Outside demo mode a run names its corpus and its tokenizer (the demo BPE would tokenize any corpus,
  silently); a dry run without a corpus checks shapes only, listing both as unchecked."""
  data = config.data
  if data.demo:
    return
  if not data.path and not dry_run:
    raise ConfigError(_DATA_PATH_REQUIRED)
  if data.path and not data.tokenizer_path:
    raise ConfigError(_tokenizer_required(config))
  if not data.path:
    unchecked.append(_DATA_PATH_REQUIRED)
    if not data.tokenizer_path:
      unchecked.append(_tokenizer_required(config))


def check_tokenizer_fits(tokenizer_vocab: int, model_cfg: ModelConfig, field: str) -> None:
  """The tokenizer's ids must fit the model's embedding."""
  if tokenizer_vocab > model_cfg.vocab_size:
    raise ConfigError(f"{field}: tokenizer has {tokenizer_vocab} tokens, more than "
                      f"config.model.vocab_size={model_cfg.vocab_size}")


# -- the model's start: a HF checkpoint, the SSA feature file ---------------------------------------------
def check_against_hf(model_cfg: ModelConfig, hf_cfg: ModelConfig, hf_dir: str) -> None:
  """The architecture fields of config.model must be those of the HF checkpoint it starts from."""
  runtime = ("dtype", "remat", "attention_impl", "splash_block_q", "splash_block_kv", "scan_layers", "ssa",
             "init_std")  # not the architecture
  mismatched = [f.name for f in dataclasses.fields(ModelConfig)
                if f.name not in runtime and getattr(model_cfg, f.name) != getattr(hf_cfg, f.name)]
  if mismatched:
    raise ConfigError(f"config.model: fields {mismatched} differ from {hf_dir}/config.json "
                      f"(e.g. {mismatched[0]}: config {getattr(model_cfg, mismatched[0])!r} vs checkpoint "
                      f"{getattr(hf_cfg, mismatched[0])!r})")


def _check_init(config: ml_collections.ConfigDict, model_cfg: ModelConfig, dry_run: bool,
                unchecked: list[str]) -> None:
  """config.init: a fine-tune config needs a HF checkpoint; a named one must exist (and match: here in a dry run)."""
  hf_dir = config.init.hf_dir
  require_gcs(hf_dir, "config.init.hf_dir")
  if hf_dir and not epath.Path(hf_dir).exists():
    raise ConfigError(f"config.init.hf_dir: {hf_dir} does not exist")
  if config.get("mode") == "finetune" and not hf_dir:
    message = ("config.init.hf_dir: required by a fine-tune config (it adds SSA to a pretrained Hugging Face "
               "checkpoint): pass --config.init.hf_dir=HF_DIR (config.json + safetensors)")
    if not dry_run:
      raise ConfigError(message)
    unchecked.append(message)
  if dry_run and hf_dir:
    check_against_hf(model_cfg, config_from_hf(read_hf_config(hf_dir)), hf_dir)


def _check_ssa_inputs(model_cfg: ModelConfig, config: ml_collections.ConfigDict) -> None:
  """The frequency token term reads its fixed feature from a counts file (HF checkpoints carry none); 'demo':
  the demo corpus's counts, made at start (demo runs only)."""
  path = model_cfg.ssa.feature_path
  if not uses_token_feature(model_cfg):
    return
  if not path:
    raise ConfigError("config.model.ssa.feature_path: the 'frequency' token term needs a token-count file "
                      "(python -m ssa_jax.data.token_counts CORPUS --tokenizer=... --output=counts.npy); "
                      "without one its feature is 0 for every token and the token term is dead")
  if path == DEMO_FEATURE_PATH:
    if not config.data.demo:
      raise ConfigError(f"config.model.ssa.feature_path: {DEMO_FEATURE_PATH!r} means the demo corpus's token "
                        f"counts, but this run reads config.data.path={config.data.path!r}: pass a counts file "
                        f"of that corpus (python -m ssa_jax.data.token_counts)")
    return
  if not epath.Path(path).exists():
    raise ConfigError(f"config.model.ssa.feature_path: {path} does not exist")


def _with_feature_path(model_cfg: ModelConfig, path: str) -> ModelConfig:
  return dataclasses.replace(model_cfg, ssa=dataclasses.replace(model_cfg.ssa, feature_path=path))


def describe_ssa(ssa) -> str:
  """One phrase for the log: 'off', or each term's kind and the scaled projections."""
  if not ssa.enabled:
    return "off"
  token = ssa.token_kind if ssa.token else "off"
  position = ssa.position_kind if ssa.position else "off"
  return f"token {token}, position {position}, on {'+'.join(ssa.components)}"


def _zero_shot_warnings(t: TrainSection, ev: EvalSection) -> list[str]:
  """One line for each zero-shot task whose file is not there now: its passes will skip it, as a warning
  (a run is not refused for an evaluation it can do without)."""
  if not t.zero_shot_every:
    return []
  out = []
  for name in t.zero_shot_task_names:
    why = missing_file(name, ev.data_dir or None)
    if why:
      out.append(f"config.train.zero_shot_tasks: {why.replace('--data_dir', 'config.eval.data_dir')}; each "
                 f"zero-shot pass will skip it (set --config.eval.data_dir=DIR)")
  return out


# -- the checks in order -----------------------------------------------------------------------------------
def _start_runtime(config: ml_collections.ConfigDict, workdir: str | None, tensorboard: bool, dry_run: bool) -> None:
  """The workdir's filesystem, then jax's processes and backends."""
  if not dry_run:
    require_gcs(str(workdir), "--workdir")
    if tensorboard:
      require_gcs(str(workdir), "--workdir (TensorBoard event files)", TENSORBOARD)
  # The loop's own stop agreement (preemption.py) replaces jax's preemption service, whose C++ SIGTERM
  # handler would swallow a SIGTERM that comes before the loop installs its handlers.
  jax.config.update("jax_enable_preemption_service", False)
  distributed.maybe_initialize(config.distributed)
  warn_if_accelerator_unused()  # after distributed init: it starts jax's backends


def check_config(config: ml_collections.ConfigDict, workdir: str | None, dry_run: bool = False) -> RunContext:
  """Validates every field that can be checked before reading data or compiling; names the field on failure.
  The context has no tokenizer yet (attach_data reads it); a dry run also makes `_dry_run_checks`."""
  config = ml_collections.ConfigDict(config.to_dict())  # a private copy (attach_data resolves its data paths)
  t, ev = train_section(config.train), eval_section(config.eval)
  _start_runtime(config, workdir, t.tensorboard, dry_run)
  model_cfg = model_config_from_dict(config.model)
  _check_ssa_inputs(model_cfg, config)
  if t.seq_len > model_cfg.max_seq_len:
    raise ConfigError(f"config.train.seq_len: {t.seq_len} exceeds config.model.max_seq_len={model_cfg.max_seq_len}")
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(t.global_batch_size, mesh, t.microbatches)
  unchecked: list[str] = []
  _check_init(config, model_cfg, dry_run, unchecked)
  _check_data_named(config, dry_run, unchecked)
  warnings = schedule_warnings(t) + _zero_shot_warnings(t, ev)
  for line in warnings:
    log(f"warning: {line}")
  ctx = RunContext(config=config, train=t, eval=ev, workdir=None if dry_run else epath.Path(workdir),
                   model_cfg=model_cfg, mesh=mesh, rules=sharding.rules_from_config(config.sharding.rules),
                   tokenizer=None, unchecked=unchecked, warnings=warnings)
  return _dry_run_checks(ctx) if dry_run else ctx


def _dry_run_checks(ctx: RunContext) -> RunContext:
  """A dry run's data checks, as far as the files at hand allow: every data field; the tokenizer when its file
  is here; the validation split when the corpus is here too; a demo feature file is left for the run to count."""
  data, unchecked = ml_collections.ConfigDict(ctx.data.to_dict()), ctx.unchecked
  for field, why in (("path", "a real run reads it"), ("tokenizer_path", "vocab size unchecked")):
    if data[field] and not epath.Path(data[field]).exists():
      unchecked.append(f"config.data.{field}: {data[field]} does not exist here ({why})")
      data[field] = ""
  validate_data_config(data)
  demo_bpe = not ctx.data.tokenizer_path and ctx.data.demo  # not yet trained: its size is configured
  tokenizer = load_tokenizer(data.tokenizer_path) if data.tokenizer_path else None
  if tokenizer is not None:
    check_tokenizer_fits(tokenizer.vocab_size, ctx.model_cfg, "config.data.tokenizer_path")
  elif demo_bpe:
    check_tokenizer_fits(int(data.demo_vocab_size), ctx.model_cfg, "config.data.demo_vocab_size")
  ctx = dataclasses.replace(ctx, tokenizer=tokenizer, tokenizer_checked=tokenizer is not None or bool(demo_bpe))
  if tokenizer is not None and ctx.data.path and epath.Path(ctx.data.path).exists():
    check_validation(ctx)
  if uses_token_feature(ctx.model_cfg) and ctx.model_cfg.ssa.feature_path == DEMO_FEATURE_PATH:
    # Counting needs the corpus; a zero feature has the same shape for building the step.
    ctx.unchecked.append("config.model.ssa.feature_path: 'demo' (the demo corpus's token counts, made at start)")
    ctx = dataclasses.replace(ctx, model_cfg=_with_feature_path(ctx.model_cfg, ""))
  return ctx


def attach_data(ctx: RunContext) -> RunContext:
  """The context with its tokenizer (the demo corpus / BPE made if needed, vocab sizes checked) and the demo
  token counts resolved (counted once, cached). Writes nothing in the workdir."""
  data, model_cfg = ctx.data, ctx.model_cfg
  validate_data_config(data)
  data.path, data.tokenizer_path = resolve_paths(data)  # check_config made sure a non-demo run names both
  tokenizer = load_tokenizer(data.tokenizer_path)
  check_tokenizer_fits(tokenizer.vocab_size, model_cfg, "config.data.tokenizer_path")
  if uses_token_feature(model_cfg) and model_cfg.ssa.feature_path == DEMO_FEATURE_PATH:
    counts = ensure_demo_token_counts(data.cache_dir, data.path, data.tokenizer_path)
    model_cfg = _with_feature_path(model_cfg, counts)
  return dataclasses.replace(ctx, tokenizer=tokenizer, model_cfg=model_cfg)


def prepare(config: ml_collections.ConfigDict, workdir: str | None, dry_run: bool = False) -> RunContext:
  """check_config, then (unless `dry_run`) attach_data: everything a run needs before compiling."""
  ctx = check_config(config, workdir, dry_run)
  return ctx if dry_run else attach_data(ctx)


def run_config_json(ctx: RunContext) -> dict[str, Any]:
  """The run's config as stored in WORKDIR/config.json and every checkpoint (data and feature paths resolved)."""
  out = json.loads(ctx.config.to_json_best_effort())
  out["model"]["ssa"]["feature_path"] = ctx.model_cfg.ssa.feature_path
  return out


# -- the workdir: resume, refuse, or say it is complete -----------------------------------------------------
def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(d, dict):
    return {prefix: d}
  return {name: leaf for k, v in d.items() for name, leaf in _flatten(v, f"{prefix}.{k}" if prefix else str(k)).items()}


def config_differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[tuple[str, Any, Any]]:
  """(field, saved value, wanted value) of every field that differs and may not change on resume
  (RESUMABLE_FIELDS). A field only one side has (the code gained or lost a config field) is no difference."""
  a, b = _flatten(saved), _flatten(wanted)
  return [(k, a[k], b[k]) for k in sorted(set(a) & set(b))
          if a[k] != b[k] and not any(k == f or k.startswith(f + ".") for f in RESUMABLE_FIELDS)]


def _short(v: Any) -> str:
  text = repr(v)
  return text if len(text) <= 40 else text[:37] + "..."


def _fields_differ(n: int) -> str:
  """'1 field differs', '3 fields differ'."""
  return f"{n} field differs" if n == 1 else f"{n} fields differ"


def check_workdir(ctx: RunContext) -> dict[str, Any] | None:
  """Refuses (ConfigError naming the fields) a workdir whose checkpoint another config made or is past
  config.train.steps; returns WORKDIR/summary.json, marked `already_complete`, when the run is complete (its
  checkpoint and summary at config.train.steps, not stopped); else None (start or resume). Reads only."""
  try:
    root, latest = checkpoint.resolve_step_dir(ctx.workdir / "checkpoints")
    saved = checkpoint.read_config(root / str(latest))
  except checkpoint.NotACheckpointError:
    return None  # no (finished) checkpoint yet: the run starts from step 0
  diffs = config_differences(saved, run_config_json(ctx))
  if diffs:
    shown = "; ".join(f"config.{k}: {_short(old)} there, {_short(new)} here" for k, old, new in diffs[:4])
    more = f"; and {len(diffs) - 4} more" if len(diffs) > 4 else ""
    raise ConfigError(
        f"--workdir {ctx.workdir}: its checkpoint {latest} was made by another config ({_fields_differ(len(diffs))}: "
        f"{shown}{more}); pass another --workdir, or the same values to "
        f"resume it (fields that may change on resume: ssa_jax.train.preflight.RESUMABLE_FIELDS)")
  steps = int(ctx.train.steps)
  if latest > steps:
    raise ConfigError(f"config.train.steps: {steps}, but {ctx.workdir} holds checkpoint {latest}, past it: "
                      f"pass --config.train.steps={latest} or more to continue that run, or another --workdir")
  try:
    summary = json.loads((ctx.workdir / SUMMARY_NAME).read_text())
  except (OSError, json.JSONDecodeError):
    summary = None  # absent, or unreadable (a crash mid-write): the run's end is done again
  if latest == steps and summary and summary.get("step") == steps and not summary.get("stopped"):
    return dict(summary, already_complete=True)
  return None


# -- the validation split --------------------------------------------------------------------------------
def _why_no_validation_batch(ctx: RunContext) -> str | None:
  """None when the validation split yields a batch; else the cause, naming the field to change."""
  t, data = ctx.train, ctx.data
  split = data.validation_split
  where = f"the {split!r} split of {data.path}"
  try:
    if has_a_batch(ctx, split):
      return None
  except FileNotFoundError:
    return f"config.data.validation_split: {where} has no files"
  # A non-repeating split ends at the first stream that runs out: a split of fewer documents than streams ends
  # before its first batch, however many tokens it holds. The largest smaller stream count that reads a batch:
  batch, processes = t.global_batch_size, jax.process_count()
  streams = resolve_num_streams(data.num_streams, batch, processes)
  fewer = next((n for n in range(streams - processes, 0, -processes)
                if batch % n == 0 and has_a_batch(ctx, split, num_streams=n)), None)
  if fewer is not None:
    return (f"config.data.num_streams: {where} yields no batch with {streams} reader streams (a stream without "
            f"enough documents of its own ends the split; config.data.num_streams={data.num_streams}"
            f"{' picks ' + str(streams) if not data.num_streams else ''}), and does with {fewer}: pass "
            f"--config.data.num_streams={fewer}")
  return (f"config.data.validation_split: {where} holds less than one batch ({batch} windows of "
          f"{t.seq_len + 1} tokens)")


def check_validation(ctx: RunContext) -> None:
  """Validation needs a batch of config.data.validation_split: a split without one is refused when validation
  runs during training (eval_every > 0), said in one line when it runs at the end only."""
  t = ctx.train
  why_not = _why_no_validation_batch(ctx) if t.eval_batches > 0 else None  # eval_batches=0: validation is off
  if why_not is None:
    return
  off = "--config.train.eval_every=0 --config.train.eval_batches=0 turns validation off"
  if t.eval_every > 0:
    raise ConfigError(f"{why_not}; config.train.eval_every={t.eval_every} asks for validation: name another "
                      f"split, or {off}")
  log(f"validation: off, {why_not}; {off} to silence this")
