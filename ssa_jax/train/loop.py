"""The training loop: config checks, mesh, data, init / resume, jitted steps, metrics, checkpoints, final eval."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from ssa_jax import checkpoint, sharding
from ssa_jax.config import ConfigError, ModelConfig, model_config_from_dict
from ssa_jax.model import Decoder, param_shapes
from ssa_jax.train import metrics as metrics_lib
from ssa_jax.train.optim import learning_rate_schedule, make_optimizer
from ssa_jax.train.state import TrainState, create_state, state_shardings
from ssa_jax.train.step import jit_train_step, make_eval_step

log = metrics_lib.log


@dataclasses.dataclass
class Run:
  """Everything a run builds from its config before the first compile."""

  config: ml_collections.ConfigDict
  workdir: epath.Path
  model_cfg: ModelConfig
  mesh: Any
  rules: Any
  tokenizer: Any


def resolve_data(config: ml_collections.ConfigDict, model_cfg: ModelConfig):
  """Fills in the demo corpus / tokenizer when no path is given; returns the tokenizer. Checks vocab sizes."""
  from ssa_jax.data.config import resolve_paths, validate_data_config
  from ssa_jax.data.tokenizer import load_tokenizer

  data = config.data
  if not data.path and not data.demo:
    raise ConfigError("config.data.path: required (a SlimPajama / parquet / jsonl / txt directory or file, "
                      "local or gs://); set config.data.demo=True for the offline demo corpus")
  validate_data_config(data)
  data.path, data.tokenizer_path = resolve_paths(data)
  tokenizer = load_tokenizer(data.tokenizer_path)
  if tokenizer.vocab_size > model_cfg.vocab_size:
    raise ConfigError(f"config.data.tokenizer_path: tokenizer has {tokenizer.vocab_size} tokens, more than "
                      f"config.model.vocab_size={model_cfg.vocab_size}")
  return tokenizer


def prepare(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Validates every field that can be checked before compiling; names the field on failure."""
  config = ml_collections.ConfigDict(config.to_dict())  # a private copy we may fill in
  t = config.train
  for field in ("steps", "global_batch_size", "seq_len", "log_every", "microbatches"):
    if int(t[field]) <= 0:
      raise ConfigError(f"config.train.{field}: expected a positive int, got {t[field]!r}")
  sharding.maybe_initialize_distributed(config.distributed)
  model_cfg = model_config_from_dict(config.model)
  if model_cfg.ssa.enabled and model_cfg.ssa.variant == "feature" and not model_cfg.ssa.feature_path \
      and not config.init.hf_dir:
    raise ConfigError("config.model.ssa.feature_path: the feature variant needs a token-count file "
                      "(python -m ssa_jax.data.token_counts)")
  if t.seq_len > model_cfg.max_seq_len:
    raise ConfigError(f"config.train.seq_len: {t.seq_len} exceeds config.model.max_seq_len={model_cfg.max_seq_len}")
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(t.global_batch_size, mesh, t.microbatches)
  rules = sharding.rules_from_config(config.sharding.rules)
  if config.init.hf_dir and not epath.Path(config.init.hf_dir).exists():
    raise ConfigError(f"config.init.hf_dir: {config.init.hf_dir} does not exist")
  tokenizer = resolve_data(config, model_cfg)
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  return Run(config, workdir, model_cfg, mesh, rules, tokenizer)


def _data_iterator(run: Run, split: str, repeat: bool):
  from ssa_jax.data.pipeline import make_lm_iterator

  t = run.config.train
  return make_lm_iterator(run.config.data, split=split, seq_len=t.seq_len, global_batch_size=t.global_batch_size,
                          process_index=jax.process_index(), process_count=jax.process_count(),
                          tokenizer=run.tokenizer, repeat=repeat)


def _initial_params(run: Run):
  """Host params for fine-tuning from a HF checkpoint (SSA freshly initialised), else None (fresh init)."""
  if not run.config.init.hf_dir:
    return None
  from ssa_jax.hf import from_hf

  ssa = run.model_cfg.ssa if run.model_cfg.ssa.enabled else None
  model, params = from_hf(run.config.init.hf_dir, ssa=ssa, rng_seed=run.config.seed)
  ours = dataclasses.replace(run.model_cfg, ssa=model.config.ssa)
  mismatched = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("dtype", "remat", "attention_impl",
                "ssa", "init_std") and getattr(ours, f.name) != getattr(model.config, f.name)]
  if mismatched:
    raise ConfigError(f"config.model: fields {mismatched} differ from {run.config.init.hf_dir}/config.json "
                      f"(e.g. {mismatched[0]}: config {getattr(ours, mismatched[0])!r} vs checkpoint "
                      f"{getattr(model.config, mismatched[0])!r})")
  return params


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step (it then checkpoints and exits)."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def validation_loss(run: Run, eval_step, params) -> float | None:
  """Mean next-token loss over the first `eval_batches` batches of the validation split."""
  t = run.config.train
  if t.eval_batches <= 0:
    return None
  it = _data_iterator(run, run.config.data.validation_split, repeat=False)
  losses = []
  try:
    for _, batch in zip(range(t.eval_batches), it):
      losses.append(float(eval_step(params, sharding.global_batch(batch, run.mesh))))
  finally:
    it.close()
  return float(np.mean(losses)) if losses else None


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) per `config` in `workdir`; returns a summary (final step, losses, paths)."""
  run = prepare(config, workdir)
  cfg, t, mesh = run.config, run.config.train, run.mesh
  model = Decoder(run.model_cfg)
  tx = make_optimizer(t, param_shapes(run.model_cfg))
  schedule = learning_rate_schedule(t)
  abstract, shardings = state_shardings(run.model_cfg, tx, mesh, run.rules)
  run_config = json.loads(cfg.to_json_best_effort())
  (run.workdir / "config.json").write_text(json.dumps(run_config, indent=2))

  mngr = checkpoint.train_manager(run.workdir, t.keep_checkpoints, async_save=t.async_checkpoints)
  train_it = _data_iterator(run, "train", repeat=True)
  latest = mngr.latest_step()
  if latest is not None:
    params, opt_state, data_states = checkpoint.restore_train_state(mngr, latest, abstract, shardings)
    state = TrainState(step=jax.device_put(np.int32(latest), shardings.step), params=params, opt_state=opt_state)
    # Every process's streams, merged: the data layer restores its own streams from them whatever the new
    # process count (the global batch layout depends on config.data.num_streams, not on the process count).
    merged = dict(data_states[0], streams={k: v for st in data_states for k, v in st["streams"].items()})
    train_it.set_state(merged)
    log(f"resumed from {run.workdir}/checkpoints/{latest}")
  else:
    state = create_state(run.model_cfg, tx, shardings, jax.random.PRNGKey(cfg.seed), _initial_params(run))
  start = int(jax.device_get(state.step))

  batch_sharding = sharding.batch_sharding(mesh)
  step_fn = jit_train_step(model, tx, schedule, t.microbatches, shardings, mesh)
  eval_step = jax.jit(make_eval_step(model), in_shardings=(shardings.params, {"tokens": batch_sharding}),
                      out_shardings=sharding.replicated(mesh))

  writer = metrics_lib.MetricsWriter(run.workdir, t.tensorboard, resume_step=start)
  progress = metrics_lib.ConsoleProgress(t.steps, start)
  tokens_per_step = t.global_batch_size * t.seq_len
  flops_token = metrics_lib.flops_per_token(run.model_cfg, t.seq_len)
  peak = metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind)
  preemption = _Preemption()
  log(f"training {run.model_cfg.family} (ssa={run.model_cfg.ssa.variant if run.model_cfg.ssa.enabled else 'off'}) "
      f"on mesh {dict(mesh.shape)} ({jax.devices()[0].device_kind}), steps {start}->{t.steps}, "
      f"{tokens_per_step:,} tokens/step")

  def save(force: bool) -> None:
    if mngr.latest_step() == int(jax.device_get(state.step)):
      return  # already saved at this step (e.g. the last step is a multiple of checkpoint_every)
    checkpoint.save_train_state(mngr, state, checkpoint.gather_json(train_it.get_state()), run_config, force=force)

  bad_in_a_row, nonfinite_total, pending = 0, 0, None
  last_loss, stopped = None, None
  t_last, steps_since = time.time(), 0
  try:
    for step in range(start, t.steps):
      batch = sharding.global_batch(next(train_it), mesh)
      state, m = step_fn(state, batch)
      steps_since += 1
      # Read the previous step's flag: one step of lag keeps the host ahead of the device.
      if pending is not None:
        if bool(pending):
          bad_in_a_row, nonfinite_total = bad_in_a_row + 1, nonfinite_total + 1
          log(f"step {step}: non-finite loss or gradient; update skipped ({bad_in_a_row} in a row)")
        else:
          bad_in_a_row = 0
        if bad_in_a_row >= t.max_nonfinite_steps:
          stopped = f"{bad_in_a_row} non-finite steps in a row"
          break
      pending = m["nonfinite"]
      done = step + 1
      if done % t.log_every == 0 or done == t.steps:
        m = jax.device_get(m)
        elapsed = time.time() - t_last
        tps = tokens_per_step * steps_since / elapsed
        record = {"step": done, "loss": float(m["loss"]), "lr": float(m["lr"]), "grad_norm": float(m["grad_norm"]),
                  "tokens_per_s": tps, "tokens_per_s_per_device": tps / mesh.size,
                  "mfu": tps * flops_token / (peak * mesh.size) if peak else None,
                  "nonfinite_total": nonfinite_total + int(m["nonfinite"]),
                  **{k: v for k, v in m.items() if k.startswith("tau_")},
                  **{f"data/{k}": v for k, v in train_it.stats().items()}}
        writer.write(record)
        progress.line(done, record)
        last_loss, t_last, steps_since = record["loss"], time.time(), 0
      if t.eval_every and done % t.eval_every == 0 and done != t.steps:
        val = validation_loss(run, eval_step, state.params)
        if val is not None:
          writer.write({"step": done, "val_loss": val, "val_ppl": math.exp(min(val, 50.0))})
          log(f"step {done}: validation loss {val:.4f} ppl {math.exp(min(val, 50.0)):.2f}")
      if preemption.requested:
        stopped = "SIGTERM"
        break
      if t.checkpoint_every and done % t.checkpoint_every == 0:
        save(force=False)
    if pending is not None and bool(pending) and stopped is None:
      nonfinite_total += 1
    save(force=True)
    mngr.wait_until_finished()
    final_step = int(jax.device_get(state.step))
    summary = {"step": final_step, "loss": last_loss, "workdir": str(run.workdir), "stopped": stopped,
               "nonfinite_steps": nonfinite_total}
    if not stopped:
      val = validation_loss(run, eval_step, state.params)
      if val is not None:
        summary.update(val_loss=val, val_ppl=math.exp(min(val, 50.0)))
        writer.write({"step": final_step, "val_loss": val, "val_ppl": summary["val_ppl"]})
  finally:
    preemption.restore()
    writer.close()
    train_it.close()
  if stopped:
    log(f"stopped at step {final_step}: {stopped}; checkpoint saved in {run.workdir}/checkpoints/{final_step}")
    if stopped != "SIGTERM":
      raise FloatingPointError(f"training stopped: {stopped}; the last good parameters are checkpointed at step "
                               f"{final_step} in {run.workdir}/checkpoints")
    return summary
  if cfg.eval.at_end:
    from ssa_jax.train.final_eval import evaluate_at_end

    summary["results"] = str(evaluate_at_end(run, model, state.params, summary))
  return summary
