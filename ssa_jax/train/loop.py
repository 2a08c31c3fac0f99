"""The training loop, top to bottom: the start-up checks (preflight.py), the state (fresh or resumed), then
per step the jitted step and the hooks (hooks.py: log, validate; zero_shot.py: tasks; stop; time_checkpoints.py:
save), then the last checkpoint, the final validation and the end-of-run evaluation (final_eval.py). What it
opens it closes in one ExitStack.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
from typing import Any, Callable

import jax
import numpy as np
import optax

from ssa_jax.errors import ConfigError
from ssa_jax.formats import checkpoint
from ssa_jax.formats.hf import from_hf
from ssa_jax.model.decoder import BUFFERS, Decoder
from ssa_jax.model.params import param_shapes
from ssa_jax.runtime import sharding
from ssa_jax.train.context import RunContext
from ssa_jax.train.evaluation import EvalStep, data_iterator
from ssa_jax.train.final_eval import evaluate_at_end
from ssa_jax.train.hooks import LoopState, MetricLog, Validation, save_checkpoint
from ssa_jax.train.metrics import format_duration, log
from ssa_jax.train.optim import learning_rate_schedule, make_optimizer
from ssa_jax.train.preemption import StopRequests
from ssa_jax.train.preflight import (SUMMARY_NAME, attach_data, check_against_hf, check_config, check_validation,
                                     check_workdir, describe_ssa, run_config_json)
from ssa_jax.train.prefetch import DevicePrefetcher
from ssa_jax.train.profiling import Profiler
from ssa_jax.train.state import TrainState, create_state, state_shardings
from ssa_jax.train.step import jit_loop_step, make_eval_step, nonfinite_counts, under_mesh
from ssa_jax.train.time_checkpoints import CheckpointSchedule
from ssa_jax.train.workdir_lock import workdir_lock
from ssa_jax.train.zero_shot import ZeroShot


def train(config, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) per `config` in `workdir`; returns a summary (final step, losses, paths, wall_s).

  One run per workdir: a second one fails at once with WorkdirLockedError, naming the holder. A workdir whose
  checkpoint another config made is refused before anything is written (preflight.check_workdir); a complete
  one returns its stored summary (`already_complete`) without training or evaluating again."""
  started = time.time()
  ctx = check_config(config, workdir)
  with workdir_lock(ctx.workdir):  # before the data (the demo corpus may take a while to build the first time)
    ctx = attach_data(ctx)
    complete = check_workdir(ctx)
    if complete is not None:
      step, results = complete["step"], f", results {complete['results']}" if complete.get("results") else ""
      log(f"{ctx.workdir}: complete at step {step} (config.train.steps): checkpoint {ctx.workdir}/checkpoints/{step}"
          f"{results}; nothing to do (a larger --config.train.steps trains further)")
      return complete
    check_validation(ctx)
    return _train(ctx, started)


@dataclasses.dataclass(frozen=True)
class Programs:
  """The model, its optimizer and its jitted steps, traced under the run's mesh."""

  model: Decoder
  tx: optax.GradientTransformation
  abstract: TrainState  # the state's shapes
  shardings: TrainState  # the state's NamedShardings
  loop_step: Callable  # (state, counts, batch) -> (state, counts, metrics); state and counts donated
  eval_step: EvalStep


def _programs(ctx: RunContext) -> Programs:
  """The model, the optimizer, the state's shardings and the jitted steps of the run."""
  t, mesh = ctx.train, ctx.mesh
  model = Decoder(ctx.model_cfg)
  tx = make_optimizer(t, param_shapes(ctx.model_cfg), ctx.model_cfg)
  abstract, shardings = state_shardings(ctx.model_cfg, tx, mesh, ctx.rules)
  eos_id = ctx.tokenizer.eos_id if ctx.data.document_masking else None  # documents split at EOS
  loop_step = jit_loop_step(model, tx, learning_rate_schedule(t), t.microbatches, shardings, mesh, t.loss_chunk_size,
                            t.layer_norms, eos_id)
  eval_step = jax.jit(make_eval_step(model, t.loss_chunk_size, eos_id),
                      in_shardings=(shardings.variables, {"tokens": sharding.batch_sharding(mesh)}),
                      out_shardings=sharding.replicated(mesh))
  return Programs(model, tx, abstract, shardings, under_mesh(loop_step, mesh), under_mesh(eval_step, mesh))


def _train(ctx: RunContext, started: float) -> dict[str, Any]:
  """Opens what the run needs, trains, saves, and ends (final validation, evaluation, summary)."""
  t, programs, run_config = ctx.train, _programs(ctx), run_config_json(ctx)
  with contextlib.ExitStack() as stack:  # closed in reverse: profiler, prefetcher, log, iterator, signals
    # From here on a stop signal ends the run after the step under way, with a checkpoint.
    stop = stack.enter_context(contextlib.closing(StopRequests(t.preemption_deadline_s)))
    mngr = checkpoint.train_manager(ctx.workdir, t.keep_checkpoints, async_save=t.async_checkpoints)
    train_it = stack.enter_context(contextlib.closing(data_iterator(ctx, ctx.data.train_split, repeat=True)))
    s = _initial_state(ctx, programs, mngr, train_it)
    if jax.process_index() == 0:  # the run starts (or resumes) here: its config, beside its checkpoints
      (ctx.workdir / "config.json").write_text(json.dumps(run_config, indent=2))
    metric_log = stack.enter_context(contextlib.closing(MetricLog(ctx, s.step, run_config)))
    s.last_loss = metric_log.writer.logged(s.step, "loss")
    batches = stack.enter_context(contextlib.closing(
        DevicePrefetcher(train_it, lambda b: sharding.global_batch(b, ctx.mesh))))
    profiler = stack.enter_context(contextlib.closing(
        Profiler(ctx.workdir, t.profile_start_step, t.profile_num_steps)))
    validate = Validation(ctx, programs.eval_step, metric_log.writer)
    save = functools.partial(save_checkpoint, mngr, run_config)
    hooks = Hooks(metric_log, validate, ZeroShot(ctx, programs.model, metric_log.writer), stop,
                  CheckpointSchedule(t.checkpoint_every, t.checkpoint_every_minutes), save, profiler)
    device = jax.devices()[0].device_kind
    log(f"training {ctx.model_cfg.family} (SSA {describe_ssa(ctx.model_cfg.ssa)}) on mesh {dict(ctx.mesh.shape)} "
        f"({device}), steps {s.step}->{t.steps}, {t.tokens_per_step:,} tokens/step; Ctrl-C saves a checkpoint and "
        f"stops")
    stopped = _steps(ctx, programs, s, batches, hooks)
    save(s, force=True)
    mngr.wait_until_finished()
    # Every process, the same answer: a stop requested during the last steps or the save ends the run here
    # too. The handlers are restored: from now on Ctrl-C interrupts.
    stopped = stopped or stop.finish()
    last_loss = None if s.last_loss is None else float(jax.device_get(s.last_loss))
    summary = {"step": s.step, "loss": last_loss, "workdir": str(ctx.workdir), "stopped": stopped,
               "nonfinite_steps": int(jax.device_get(s.counts["total"]))}
    if not stopped:
      summary.update(validate(s.step, s.state.variables, say=False))
  return _end(ctx, programs, s, summary, started)


@dataclasses.dataclass(frozen=True)
class Hooks:
  """What runs around each step, in the order _steps calls them."""

  log_step: MetricLog
  validate: Validation
  zero_shot: ZeroShot
  stop: StopRequests
  saves: CheckpointSchedule  # which steps are saved (every checkpoint_every steps or _minutes)
  save: Callable  # (LoopState, force) -> None
  profile: Profiler


def _steps(ctx: RunContext, programs: Programs, s: LoopState, batches: DevicePrefetcher, hooks: Hooks
           ) -> str | None:
  """Steps until config.train.steps, each followed by the hooks in this order: log, validate, zero-shot
  tasks, stop, save (every checkpoint_every steps, or checkpoint_every_minutes); returns why the run stopped
  before (a signal's name, non-finite steps).

  Per step the host takes a batch already on the devices, dispatches the step, and waits for the step before
  it: the devices always have the next step queued, and a stop request (Ctrl-C, SIGTERM) is acted on after
  the step under way, not after every step a free-running host would have dispatched ahead (tens, up to the
  next log step's read). A stop signal to any process: every process saves the same step (preemption.py).

  Non-finite steps: the step skips the update and counts it on the device; the log step reads the counts and
  stops once config.train.max_nonfinite_steps came in a row (every update that was applied was finite)."""
  t, h = ctx.train, hooks
  while s.step < t.steps:
    item = next(batches)
    h.profile.before_step(s.step)
    s.state, s.counts, metrics = programs.loop_step(s.state, s.counts, item.batch)
    if s.previous_loss is not None:
      jax.block_until_ready(s.previous_loss)  # at most one step ahead of the devices
      h.log_step.progress.first_step_done()
    s.previous_loss = s.last_loss = metrics["loss"]
    s.step, s.data_state = s.step + 1, item.data_state
    h.profile.after_step(s.step, metrics["loss"])
    if s.step % t.log_every == 0 or s.step == t.steps:
      if nonfinite := h.log_step(s.step, metrics, s.counts, item.data_stats):
        return nonfinite
    if t.eval_every and s.step % t.eval_every == 0 and s.step != t.steps:
      h.validate(s.step, s.state.variables)
    if h.zero_shot.due(s.step):
      h.zero_shot(s.step, s.state.variables)
    if signal_name := h.stop.check(s.step):
      return signal_name
    if h.saves.due(s.step):
      h.save(s, force=False)
  return None


def _initial_state(ctx: RunContext, programs: Programs, mngr, train_it) -> LoopState:
  """The latest checkpoint's state, the data iterator set to continue after it; else a fresh state."""
  counts = jax.jit(nonfinite_counts, out_shardings=sharding.replicated(ctx.mesh))()
  latest = mngr.latest_step()
  if latest is None:
    variables, hf_dir = None, ctx.config.init.hf_dir
    if hf_dir:  # a fine-tune: the HF checkpoint in the layout this run trains, SSA freshly initialised
      ssa = ctx.model_cfg.ssa if ctx.model_cfg.ssa.enabled else None
      model, variables = from_hf(hf_dir, ssa=ssa, rng_seed=ctx.config.seed, scan_layers=ctx.model_cfg.scan_layers)
      check_against_hf(dataclasses.replace(ctx.model_cfg, ssa=model.config.ssa), model.config, hf_dir)
    state = create_state(ctx.model_cfg, programs.tx, programs.shardings, jax.random.PRNGKey(ctx.config.seed),
                         variables)
    return LoopState(state=state, counts=counts, step=0, data_state=train_it.get_state())
  shardings = programs.shardings
  variables, opt_state, data_states = checkpoint.restore_train_state(mngr, latest, programs.abstract, shardings)
  state = TrainState(step=jax.device_put(np.int32(latest), shardings.step), params=variables["params"],
                     buffers=variables[BUFFERS], opt_state=opt_state)
  # Every process's streams, merged: the data layer restores its own streams from them whatever the new
  # process count (the global batch layout depends on config.data.num_streams, not on the process count).
  merged = dict(data_states[0], streams={k: v for st in data_states for k, v in st["streams"].items()})
  try:
    train_it.set_state(merged)
  except ValueError as e:  # e.g. config.data.path moved to a corpus of another layout
    raise ConfigError(f"config.data.path: {ctx.data.path} does not fit the data position saved in "
                      f"{ctx.workdir}/checkpoints/{latest} ({e})") from e
  log(f"resumed from {ctx.workdir}/checkpoints/{latest}")
  return LoopState(state=state, counts=counts, step=latest, data_state=train_it.get_state())


def _end(ctx: RunContext, programs: Programs, s: LoopState, summary: dict[str, Any],
         started: float) -> dict[str, Any]:
  """A stopped run: says so (a signal: returns the summary; non-finite steps: raises). A finished one: the
  end-of-run evaluation when config.eval.at_end; the summary stored and returned."""
  checkpoint_dir, stopped = f"{ctx.workdir}/checkpoints/{s.step}", summary["stopped"]
  if stopped:
    by_signal = {"SIGINT": "by Ctrl-C (SIGINT)", "SIGTERM": "by SIGTERM"}  # the run resumes with the same command
    log(f"stopped at step {s.step} {by_signal.get(stopped, f'after {stopped}')} after "
        f"{format_duration(time.time() - started)}; checkpoint saved in {checkpoint_dir}")
    if stopped in by_signal:
      log("run the same command again to resume from it")
      return _finish(ctx, summary, started)
    raise FloatingPointError(f"training stopped: {stopped}; the parameters after the last finite update are "
                             f"checkpointed at step {s.step} in {ctx.workdir}/checkpoints")
  if ctx.eval.at_end:
    summary["results"] = str(evaluate_at_end(ctx, programs.model, s.state.variables, summary, programs.eval_step))
  summary = _finish(ctx, summary, started)
  results = f", results {summary['results']}" if summary.get("results") else ""
  log(f"done: step {s.step}, {format_duration(summary['wall_s'])} from start to end; checkpoint "
      f"{checkpoint_dir}{results}")
  return summary


def _finish(ctx: RunContext, summary: dict[str, Any], started: float) -> dict[str, Any]:
  """The summary with the session's wall time, stored as WORKDIR/summary.json (which marks a complete run)."""
  summary = dict(summary, wall_s=round(time.time() - started, 1))
  if jax.process_index() == 0:
    (ctx.workdir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
  return summary
