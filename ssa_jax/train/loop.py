"""The training loop: config checks, mesh, data, init / resume, jitted steps, metrics, checkpoints, final eval."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from ssa_jax import checkpoint, sharding
from ssa_jax.accelerator_check import warn_if_accelerator_unused
from ssa_jax.config import ConfigError, ModelConfig, model_config_from_dict
from ssa_jax.data.demo_counts import DEMO_FEATURE_PATH
from ssa_jax.gcs import TENSORBOARD, require_gcs
from ssa_jax.model import Decoder, param_shapes, uses_token_feature
from ssa_jax.train import metrics as metrics_lib
from ssa_jax.train.optim import learning_rate_schedule, make_optimizer
from ssa_jax.train.state import TrainState, create_state, state_shardings
from ssa_jax.train.preemption import StopRequests
from ssa_jax.train.prefetch import DevicePrefetcher
from ssa_jax.train.step import jit_loop_step, make_eval_step, nonfinite_counts
from ssa_jax.train.workdir_lock import workdir_lock

log = metrics_lib.log
STOP_SIGNALS = ("SIGTERM", "SIGINT")  # the values of summary["stopped"] for a requested stop


@dataclasses.dataclass
class Run:
  """Everything a run builds from its config before the first compile."""

  config: ml_collections.ConfigDict
  workdir: epath.Path | None  # None for a dry run (nothing is written)
  model_cfg: ModelConfig
  mesh: Any
  rules: Any
  tokenizer: Any  # None for a dry run that could not load it
  # Dry run: checks that need files a dry run does not require (the corpus, the HF checkpoint), one line each.
  unchecked: list[str] = dataclasses.field(default_factory=list)
  tokenizer_checked: bool = True  # dry run: False when the tokenizer's vocab size could not be compared


def resolve_data(config: ml_collections.ConfigDict, model_cfg: ModelConfig):
  """Fills in the demo corpus / tokenizer when no path is given; returns the tokenizer. Checks vocab sizes."""
  from ssa_jax.data.config import resolve_paths, validate_data_config
  from ssa_jax.data.tokenizer import load_tokenizer

  data = config.data
  if not data.path and not data.demo:
    raise ConfigError(_DATA_PATH_REQUIRED)
  validate_data_config(data)
  data.path, data.tokenizer_path = resolve_paths(data)
  tokenizer = load_tokenizer(data.tokenizer_path)
  _check_vocab(tokenizer.vocab_size, model_cfg, "config.data.tokenizer_path")
  return tokenizer


_DATA_PATH_REQUIRED = ("config.data.path: required (a SlimPajama / parquet / jsonl / txt directory or file, "
                       "local or gs://); set config.data.demo=True for the offline demo corpus")


def _check_vocab(tokenizer_vocab: int, model_cfg: ModelConfig, field: str) -> None:
  if tokenizer_vocab > model_cfg.vocab_size:
    raise ConfigError(f"{field}: tokenizer has {tokenizer_vocab} tokens, more than "
                      f"config.model.vocab_size={model_cfg.vocab_size}")


def _dry_run_data(config: ml_collections.ConfigDict, model_cfg: ModelConfig, unchecked: list[str]):
  """The data checks that need no corpus: every field's value; the tokenizer only when its file exists
  (the demo BPE, not yet trained, is checked by its configured size). Returns (tokenizer or None, whether
  the tokenizer's vocab size was compared with the model's)."""
  from ssa_jax.data.config import validate_data_config
  from ssa_jax.data.tokenizer import load_tokenizer

  data = ml_collections.ConfigDict(config.data.to_dict())
  if not data.path and not data.demo:
    unchecked.append(_DATA_PATH_REQUIRED)
  elif data.path and not epath.Path(data.path).exists():
    unchecked.append(f"config.data.path: {data.path} does not exist here (a real run reads it)")
    data.path = ""
  if data.tokenizer_path and not epath.Path(data.tokenizer_path).exists():
    unchecked.append(f"config.data.tokenizer_path: {data.tokenizer_path} does not exist here (vocab size unchecked)")
    data.tokenizer_path = ""
  validate_data_config(data)
  if data.tokenizer_path:
    tokenizer = load_tokenizer(data.tokenizer_path)
    _check_vocab(tokenizer.vocab_size, model_cfg, "config.data.tokenizer_path")
    return tokenizer, True
  if not config.data.tokenizer_path:  # the demo BPE: its size is configured, the file may not be trained yet
    _check_vocab(int(data.demo_vocab_size), model_cfg, "config.data.demo_vocab_size")
    return None, True
  return None, False


def _check_against_hf(model_cfg: ModelConfig, hf_cfg: ModelConfig, hf_dir: str) -> None:
  """The architecture fields of config.model must be those of the HF checkpoint it starts from."""
  runtime = ("dtype", "remat", "attention_impl", "scan_layers", "ssa", "init_std")  # not the architecture
  mismatched = [f.name for f in dataclasses.fields(ModelConfig)
                if f.name not in runtime and getattr(model_cfg, f.name) != getattr(hf_cfg, f.name)]
  if mismatched:
    raise ConfigError(f"config.model: fields {mismatched} differ from {hf_dir}/config.json "
                      f"(e.g. {mismatched[0]}: config {getattr(model_cfg, mismatched[0])!r} vs checkpoint "
                      f"{getattr(hf_cfg, mismatched[0])!r})")


def _check_init(config: ml_collections.ConfigDict, model_cfg: ModelConfig, dry_run: bool,
                unchecked: list[str]) -> None:
  """config.init: a fine-tune config needs a HF checkpoint; one that is named must exist (and match, in a
  dry run; a real run compares while loading it)."""
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
    from ssa_jax.hf import config_from_hf, read_hf_config

    _check_against_hf(model_cfg, config_from_hf(read_hf_config(hf_dir)), hf_dir)


def _check_ssa_inputs(model_cfg: ModelConfig, config: ml_collections.ConfigDict) -> None:
  """The frequency token term reads its fixed feature from a counts file; without one it would be 0 everywhere
  (HF checkpoints carry no feature, so config.init.hf_dir does not provide it either). 'demo': the demo
  corpus's counts, made at start (demo runs only)."""
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


def _resolve_demo_feature(config: ml_collections.ConfigDict, model_cfg: ModelConfig) -> ModelConfig:
  """feature_path 'demo' -> the demo corpus's token-count file (counted once, cached); the config records it."""
  from ssa_jax.data.demo_counts import ensure_demo_token_counts

  if not uses_token_feature(model_cfg) or model_cfg.ssa.feature_path != DEMO_FEATURE_PATH:
    return model_cfg
  data = config.data
  config.model.ssa.feature_path = ensure_demo_token_counts(data.cache_dir, data.path, data.tokenizer_path)
  return model_config_from_dict(config.model)


def describe_ssa(ssa) -> str:
  """One phrase for the log: 'off', or each term's kind and the scaled projections."""
  if not ssa.enabled:
    return "off"
  token = ssa.token_kind if ssa.token else "off"
  position = ssa.position_kind if ssa.position else "off"
  return f"token {token}, position {position}, on {'+'.join(ssa.components)}"


def check_config(config: ml_collections.ConfigDict, workdir: str | None, dry_run: bool = False) -> Run:
  """Validates every field that can be checked before reading data or compiling; names the field on failure.

  The returned Run has no tokenizer yet (attach_data reads it). `dry_run`: also checks the data section as
  far as it can without the corpus; checks needing files that are absent are listed in Run.unchecked."""
  config = ml_collections.ConfigDict(config.to_dict())  # a private copy we may fill in
  t = config.train
  for field in ("steps", "global_batch_size", "seq_len", "log_every", "microbatches"):
    if int(t[field]) <= 0:
      raise ConfigError(f"config.train.{field}: expected a positive int, got {t[field]!r}")
  if not dry_run:
    require_gcs(str(workdir), "--workdir")
    if t.tensorboard:
      require_gcs(str(workdir), "--workdir (TensorBoard event files)", TENSORBOARD)
  # The loop's own stop agreement (preemption.py) replaces jax's preemption service, whose C++ SIGTERM
  # handler would swallow a SIGTERM that comes before the loop installs its handlers.
  jax.config.update("jax_enable_preemption_service", False)
  sharding.maybe_initialize_distributed(config.distributed)
  warn_if_accelerator_unused()  # after distributed init: it starts jax's backends
  model_cfg = model_config_from_dict(config.model)
  _check_ssa_inputs(model_cfg, config)
  if t.seq_len > model_cfg.max_seq_len:
    raise ConfigError(f"config.train.seq_len: {t.seq_len} exceeds config.model.max_seq_len={model_cfg.max_seq_len}")
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(t.global_batch_size, mesh, t.microbatches)
  rules = sharding.rules_from_config(config.sharding.rules)
  unchecked: list[str] = []
  _check_init(config, model_cfg, dry_run, unchecked)
  tokenizer, tokenizer_checked = None, True
  if dry_run:
    tokenizer, tokenizer_checked = _dry_run_data(config, model_cfg, unchecked)
    if uses_token_feature(model_cfg) and model_cfg.ssa.feature_path == DEMO_FEATURE_PATH:
      # Counting needs the corpus; a zero feature has the same shape for building the step.
      unchecked.append("config.model.ssa.feature_path: 'demo' (the demo corpus's token counts, made at start)")
      model_cfg = dataclasses.replace(model_cfg, ssa=dataclasses.replace(model_cfg.ssa, feature_path=""))
  return Run(config, None if dry_run else epath.Path(workdir), model_cfg, mesh, rules, tokenizer, unchecked,
             tokenizer_checked)


def attach_data(run: Run) -> Run:
  """The run with its tokenizer (the demo corpus / BPE made if needed, vocab sizes checked), the demo token
  counts resolved, and its workdir created."""
  tokenizer = resolve_data(run.config, run.model_cfg)
  model_cfg = _resolve_demo_feature(run.config, run.model_cfg)
  run.workdir.mkdir(parents=True, exist_ok=True)
  return dataclasses.replace(run, tokenizer=tokenizer, model_cfg=model_cfg)


def prepare(config: ml_collections.ConfigDict, workdir: str | None, dry_run: bool = False) -> Run:
  """check_config, then (unless `dry_run`) attach_data: everything a run needs before compiling."""
  run = check_config(config, workdir, dry_run)
  return run if dry_run else attach_data(run)


def flops_per_token(model_cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token, the decoder's and SSA's temperature matmuls together (for MFU)."""
  return metrics_lib.flops_per_token(model_cfg, seq_len) + metrics_lib.ssa_flops_per_token(model_cfg, seq_len)


def data_iterator(run: Run, split: str, repeat: bool, max_batches: int | None = None):
  """The run's batch iterator over `split` (this process's rows)."""
  from ssa_jax.data.pipeline import make_lm_iterator

  t = run.config.train
  return make_lm_iterator(run.config.data, split=split, seq_len=t.seq_len, global_batch_size=t.global_batch_size,
                          process_index=jax.process_index(), process_count=jax.process_count(),
                          tokenizer=run.tokenizer, repeat=repeat, max_batches=max_batches)


def _initial_params(run: Run):
  """Host params for fine-tuning from a HF checkpoint (SSA freshly initialised), else None (fresh init)."""
  if not run.config.init.hf_dir:
    return None
  from ssa_jax.hf import from_hf

  ssa = run.model_cfg.ssa if run.model_cfg.ssa.enabled else None
  model, params = from_hf(run.config.init.hf_dir, ssa=ssa, rng_seed=run.config.seed,
                          scan_layers=run.model_cfg.scan_layers)  # params in the layout this run trains
  _check_against_hf(dataclasses.replace(run.model_cfg, ssa=model.config.ssa), model.config, run.config.init.hf_dir)
  return params


def split_loss(run: Run, eval_step, params, split: str, max_batches: int | None = None) -> tuple[float | None, int]:
  """(mean next-token loss, batches) over `split`: its first `max_batches` batches, or all of it (None).
  Every batch is full, so the mean over batches is the mean over tokens."""
  it = data_iterator(run, split, repeat=False, max_batches=max_batches)
  losses = []
  try:
    for batch in it:  # read back once at the end: no host-device sync per batch
      losses.append(eval_step(params, sharding.global_batch(batch, run.mesh)))
  finally:
    it.close()
  return (float(np.mean(jax.device_get(losses))) if losses else None), len(losses)


def validation_loss(run: Run, eval_step, params) -> float | None:
  """Mean next-token loss over the first `eval_batches` batches of the validation split."""
  t = run.config.train
  if t.eval_batches <= 0:
    return None
  return split_loss(run, eval_step, params, run.config.data.validation_split, t.eval_batches)[0]


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) per `config` in `workdir`; returns a summary (final step, losses, paths).

  One run per workdir: a second one fails at once with WorkdirLockedError, naming the holder."""
  run = check_config(config, workdir)
  with workdir_lock(run.workdir):  # before the data (the demo corpus may take a while to build the first time)
    return _train(attach_data(run))


def _initial_state(run: Run, mngr, tx, abstract, shardings, train_it) -> tuple[TrainState, int]:
  """(state, step): the latest checkpoint's, the data iterator set to continue after it; else a fresh state."""
  latest = mngr.latest_step()
  if latest is None:
    return create_state(run.model_cfg, tx, shardings, jax.random.PRNGKey(run.config.seed), _initial_params(run)), 0
  params, opt_state, data_states = checkpoint.restore_train_state(mngr, latest, abstract, shardings)
  state = TrainState(step=jax.device_put(np.int32(latest), shardings.step), params=params, opt_state=opt_state)
  # Every process's streams, merged: the data layer restores its own streams from them whatever the new
  # process count (the global batch layout depends on config.data.num_streams, not on the process count).
  merged = dict(data_states[0], streams={k: v for st in data_states for k, v in st["streams"].items()})
  train_it.set_state(merged)
  log(f"resumed from {run.workdir}/checkpoints/{latest}")
  return state, latest


def _train(run: Run) -> dict[str, Any]:
  """The loop. Per step the host takes a batch already on the devices (DevicePrefetcher), dispatches the
  step and checks for an agreed stop request (a field read); it reads the devices only at log steps.

  Non-finite steps: the step skips the update (params and Adam moments kept, the lr schedule on the global
  step) and counts it on the device; the loop reads the counts at log steps and stops once
  `config.train.max_nonfinite_steps` came in a row: detected at the next log step at the latest, with the
  parameters after the last finite update checkpointed (every update that was applied was finite).
  Stop signals (SIGTERM, Ctrl-C) to any process: every process saves the same step and exits
  (ssa_jax/train/preemption.py)."""
  from ssa_jax.data.pipeline import sum_over_processes

  cfg, t, mesh = run.config, run.config.train, run.mesh
  model = Decoder(run.model_cfg)
  shapes = param_shapes(run.model_cfg)
  tx = make_optimizer(t, shapes)
  schedule = learning_rate_schedule(t)
  abstract, shardings = state_shardings(run.model_cfg, tx, mesh, run.rules, shapes)
  run_config = json.loads(cfg.to_json_best_effort())
  if jax.process_index() == 0:
    (run.workdir / "config.json").write_text(json.dumps(run_config, indent=2))
  # From here on a stop signal ends the run after its next step, with a checkpoint.
  stop = StopRequests(float(t.preemption_deadline_s))
  train_it = batches = writer = None
  try:
    mngr = checkpoint.train_manager(run.workdir, t.keep_checkpoints, async_save=t.async_checkpoints)
    train_it = data_iterator(run, cfg.data.train_split, repeat=True)
    state, start = _initial_state(run, mngr, tx, abstract, shardings, train_it)
    data_state = train_it.get_state()  # the iterator's state after the batches trained on so far
    batches = DevicePrefetcher(train_it, lambda b: sharding.global_batch(b, mesh))
    replicated = sharding.replicated(mesh)
    counts = jax.jit(nonfinite_counts, out_shardings=replicated)()
    step_fn = jit_loop_step(model, tx, schedule, t.microbatches, shardings, mesh, int(t.loss_chunk_size))
    eval_step = jax.jit(make_eval_step(model, int(t.loss_chunk_size)),
                        in_shardings=(shardings.params, {"tokens": sharding.batch_sharding(mesh)}),
                        out_shardings=replicated)

    writer = metrics_lib.MetricsWriter(run.workdir, t.tensorboard, resume_step=start)
    progress = metrics_lib.ConsoleProgress(t.steps, start)
    tokens_per_step = t.global_batch_size * t.seq_len
    flops_token = flops_per_token(run.model_cfg, t.seq_len)
    peak = metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind)
    log(f"training {run.model_cfg.family} (SSA {describe_ssa(run.model_cfg.ssa)}) "
        f"on mesh {dict(mesh.shape)} ({jax.devices()[0].device_kind}), steps {start}->{t.steps}, "
        f"{tokens_per_step:,} tokens/step; Ctrl-C saves a checkpoint and stops")

    host_step = start  # the step count on the host: reading state.step would wait for the device

    def save(force: bool) -> None:
      if mngr.latest_step() == host_step:
        return  # already saved at this step (e.g. the last step is a multiple of checkpoint_every)
      checkpoint.save_train_state(mngr, state, checkpoint.gather_json(data_state), run_config, force=force,
                                  step=host_step)

    last_loss, stopped, nonfinite_logged = None, None, 0
    t_last, steps_since, logged_at = time.time(), 0, start
    for step in range(start, t.steps):
      item = next(batches)
      state, counts, m = step_fn(state, counts, item.batch)
      host_step, data_state, steps_since = step + 1, item.data_state, steps_since + 1
      done = host_step
      if done % t.log_every == 0 or done == t.steps:
        m, c = jax.device_get((m, counts))  # the loop's only device read
        elapsed = time.time() - t_last
        tps = tokens_per_step * steps_since / elapsed
        data_stats = sum_over_processes(item.data_stats)  # a collective, at the same steps on every process
        record = {"step": done, "loss": float(m["loss"]), "lr": float(m["lr"]), "grad_norm": float(m["grad_norm"]),
                  "tokens_per_s": tps, "tokens_per_s_per_device": tps / mesh.size,
                  "mfu": metrics_lib.mfu(tps, flops_token, peak, mesh.size),
                  "nonfinite_total": int(c["total"]),
                  **{k: v for k, v in m.items() if k.startswith("tau_")},
                  **{f"data/{k}": v for k, v in data_stats.items()}}
        writer.write(record)
        progress.line(done, record)
        if int(c["total"]) > nonfinite_logged:
          log(f"steps {logged_at + 1}-{done}: {int(c['total']) - nonfinite_logged} non-finite loss or gradient, "
              f"update skipped ({int(c['in_a_row'])} in a row at step {done}, at most {int(c['longest'])})")
          nonfinite_logged = int(c["total"])
        last_loss, t_last, steps_since, logged_at = record["loss"], time.time(), 0, done
        if int(c["longest"]) >= t.max_nonfinite_steps:
          stopped = f"{int(c['longest'])} non-finite steps in a row"
          break
      if t.eval_every and done % t.eval_every == 0 and done != t.steps:
        val = validation_loss(run, eval_step, state.params)
        if val is not None:
          writer.write({"step": done, "val_loss": val, "val_ppl": math.exp(min(val, 50.0))})
          log(f"step {done}: validation loss {val:.4f} ppl {math.exp(min(val, 50.0)):.2f}")
      signal_name = stop.check(done)
      if signal_name:
        stopped = signal_name
        break
      if t.checkpoint_every and done % t.checkpoint_every == 0:
        save(force=False)
    save(force=True)
    mngr.wait_until_finished()
    # Every process, the same answer: a stop requested during the last steps or the save ends the run here
    # too. The handlers are restored: from now on Ctrl-C interrupts.
    agreed = stop.finish()
    stopped = stopped or agreed
    final_step = host_step
    summary = {"step": final_step, "loss": last_loss, "workdir": str(run.workdir), "stopped": stopped,
               "nonfinite_steps": int(jax.device_get(counts["total"]))}
    if not stopped:
      val = validation_loss(run, eval_step, state.params)
      if val is not None:
        summary.update(val_loss=val, val_ppl=math.exp(min(val, 50.0)))
        writer.write({"step": final_step, "val_loss": val, "val_ppl": summary["val_ppl"]})
  finally:
    if batches is not None:
      batches.close()
    stop.close()
    if writer is not None:
      writer.close()
    if train_it is not None:
      train_it.close()
  if stopped:
    how = {"SIGINT": "by Ctrl-C (SIGINT)", "SIGTERM": "by SIGTERM"}.get(stopped, f"after {stopped}")
    log(f"stopped at step {final_step} {how}; checkpoint saved in {run.workdir}/checkpoints/{final_step}")
    if stopped in STOP_SIGNALS:
      log("run the same command again to resume from it")
      return summary
    raise FloatingPointError(f"training stopped: {stopped}; the parameters after the last finite update are "
                             f"checkpointed at step {final_step} in {run.workdir}/checkpoints")
  if cfg.eval.at_end:
    from ssa_jax.train.final_eval import evaluate_at_end

    summary["results"] = str(evaluate_at_end(run, model, state.params, summary, eval_step))
  return summary
