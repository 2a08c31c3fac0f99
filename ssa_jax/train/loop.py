"""The training loop: the state (fresh or resumed), the jitted steps, metrics, checkpoints, stop requests,
validation and the end-of-run evaluation. The start-up checks live in preflight.py, the data reads of
validation in evaluation.py."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from ssa_jax.errors import ConfigError
from ssa_jax.formats import checkpoint
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.params import param_shapes
from ssa_jax.runtime import sharding
from ssa_jax.train import metrics as metrics_lib
from ssa_jax.train.evaluation import data_iterator, validation_loss
from ssa_jax.train.metrics import format_duration, log
from ssa_jax.train.optim import learning_rate_schedule, make_optimizer
from ssa_jax.train.preemption import StopRequests
from ssa_jax.train.preflight import (SUMMARY_NAME, Run, attach_data, check_against_hf, check_config,
                                     check_validation, check_workdir, describe_ssa, run_config_json)
from ssa_jax.train.prefetch import DevicePrefetcher
from ssa_jax.train.state import TrainState, create_state, state_shardings
from ssa_jax.train.step import jit_loop_step, make_eval_step, nonfinite_counts, under_mesh
from ssa_jax.train.workdir_lock import workdir_lock

STOP_SIGNALS = ("SIGTERM", "SIGINT")  # the values of summary["stopped"] for a requested stop


def flops_per_token(model_cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token, the decoder's and SSA's temperature matmuls together (for MFU)."""
  return metrics_lib.flops_per_token(model_cfg, seq_len) + metrics_lib.ssa_flops_per_token(model_cfg, seq_len)


def _initial_params(run: Run):
  """Host params for fine-tuning from a HF checkpoint (SSA freshly initialised), else None (fresh init)."""
  if not run.config.init.hf_dir:
    return None
  from ssa_jax.formats.hf import from_hf

  ssa = run.model_cfg.ssa if run.model_cfg.ssa.enabled else None
  model, params = from_hf(run.config.init.hf_dir, ssa=ssa, rng_seed=run.config.seed,
                          scan_layers=run.model_cfg.scan_layers)  # params in the layout this run trains
  check_against_hf(dataclasses.replace(run.model_cfg, ssa=model.config.ssa), model.config, run.config.init.hf_dir)
  return params


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) per `config` in `workdir`; returns a summary (final step, losses, paths, wall_s).

  One run per workdir: a second one fails at once with WorkdirLockedError, naming the holder. A workdir whose
  checkpoint another config made is refused before anything is written (preflight.check_workdir); a complete
  one returns its stored summary (`already_complete`) without training or evaluating again."""
  started = time.time()
  run = check_config(config, workdir)
  with workdir_lock(run.workdir):  # before the data (the demo corpus may take a while to build the first time)
    run = attach_data(run)
    complete = check_workdir(run)
    if complete is not None:
      _say_complete(run, complete)
      return complete
    check_validation(run)
    return _train(run, started)


def _say_complete(run: Run, summary: dict[str, Any]) -> None:
  step = summary["step"]
  results = f", results {summary['results']}" if summary.get("results") else ""
  log(f"{run.workdir}: complete at step {step} (config.train.steps): checkpoint {run.workdir}/checkpoints/{step}"
      f"{results}; nothing to do (a larger --config.train.steps trains further)")


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
  try:
    train_it.set_state(merged)
  except ValueError as e:  # e.g. config.data.path moved to a corpus of another layout
    raise ConfigError(f"config.data.path: {run.config.data.path} does not fit the data position saved in "
                      f"{run.workdir}/checkpoints/{latest} ({e})") from e
  log(f"resumed from {run.workdir}/checkpoints/{latest}")
  return state, latest


def _train(run: Run, started: float) -> dict[str, Any]:
  """The loop. Per step the host takes a batch already on the devices (DevicePrefetcher), dispatches the
  step, waits for the step before it to finish and checks for an agreed stop request (a field read); it
  reads the devices' values only at log steps.

  The wait keeps the host one step ahead of the devices, no more: the devices always have the next step
  queued, and a stop request (Ctrl-C, SIGTERM) is acted on after the step under way, not after every step
  the host had dispatched ahead (with nothing to hold it, the host ran tens of steps ahead, to the next log
  step's read). Stop signals to any process: every process saves the same step and exits
  (ssa_jax/train/preemption.py).

  Non-finite steps: the step skips the update (params and Adam moments kept, the lr schedule on the global
  step) and counts it on the device; the loop reads the counts at log steps and stops once
  `config.train.max_nonfinite_steps` came in a row: detected at the next log step at the latest, with the
  parameters after the last finite update checkpointed (every update that was applied was finite)."""
  from ssa_jax.data.pipeline import sum_over_processes

  cfg, t, mesh = run.config, run.config.train, run.mesh
  model = Decoder(run.model_cfg)
  shapes = param_shapes(run.model_cfg)
  tx = make_optimizer(t, shapes)
  schedule = learning_rate_schedule(t)
  abstract, shardings = state_shardings(run.model_cfg, tx, mesh, run.rules, shapes)
  run_config = run_config_json(run)
  # From here on a stop signal ends the run after the step under way, with a checkpoint.
  stop = StopRequests(float(t.preemption_deadline_s))
  train_it = batches = writer = None
  try:
    mngr = checkpoint.train_manager(run.workdir, t.keep_checkpoints, async_save=t.async_checkpoints)
    train_it = data_iterator(run, cfg.data.train_split, repeat=True)
    state, start = _initial_state(run, mngr, tx, abstract, shardings, train_it)
    if jax.process_index() == 0:  # the run starts (or resumes) here: its config, beside its checkpoints
      (run.workdir / "config.json").write_text(json.dumps(run_config, indent=2))
    data_state = train_it.get_state()  # the iterator's state after the batches trained on so far
    batches = DevicePrefetcher(train_it, lambda b: sharding.global_batch(b, mesh))
    replicated = sharding.replicated(mesh)
    counts = jax.jit(nonfinite_counts, out_shardings=replicated)()
    step_fn = under_mesh(jit_loop_step(model, tx, schedule, t.microbatches, shardings, mesh,
                                       int(t.loss_chunk_size)), mesh)
    eval_step = under_mesh(jax.jit(make_eval_step(model, int(t.loss_chunk_size)),
                                   in_shardings=(shardings.params, {"tokens": sharding.batch_sharding(mesh)}),
                                   out_shardings=replicated), mesh)

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

    # The loss of the latest step (a device value; read once at the end), the previous step's (waited for).
    last_loss, previous_loss = writer.logged(start, "loss"), None
    stopped, nonfinite_logged = None, 0
    t_last, steps_since, logged_at = time.time(), 0, start
    for step in range(start, t.steps):
      item = next(batches)
      state, counts, m = step_fn(state, counts, item.batch)
      if previous_loss is not None:
        jax.block_until_ready(previous_loss)  # at most one step ahead of the devices (see the docstring)
      previous_loss = last_loss = m["loss"]
      host_step, data_state, steps_since = step + 1, item.data_state, steps_since + 1
      done = host_step
      if done % t.log_every == 0 or done == t.steps:
        m, c = jax.device_get((m, counts))  # the loop's only read of device values
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
        t_last, steps_since, logged_at = time.time(), 0, done
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
    summary = {"step": final_step, "loss": None if last_loss is None else float(jax.device_get(last_loss)),
               "workdir": str(run.workdir), "stopped": stopped,
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
  checkpoint_dir = f"{run.workdir}/checkpoints/{final_step}"
  if stopped:
    how = {"SIGINT": "by Ctrl-C (SIGINT)", "SIGTERM": "by SIGTERM"}.get(stopped, f"after {stopped}")
    log(f"stopped at step {final_step} {how} after {format_duration(time.time() - started)}; checkpoint saved "
        f"in {checkpoint_dir}")
    if stopped in STOP_SIGNALS:
      log("run the same command again to resume from it")
      return _finish(run, summary, started)
    raise FloatingPointError(f"training stopped: {stopped}; the parameters after the last finite update are "
                             f"checkpointed at step {final_step} in {run.workdir}/checkpoints")
  if cfg.eval.at_end:
    from ssa_jax.train.final_eval import evaluate_at_end

    summary["results"] = str(evaluate_at_end(run, model, state.params, summary, eval_step))
  summary = _finish(run, summary, started)
  results = f", results {summary['results']}" if summary.get("results") else ""
  log(f"done: step {final_step}, {format_duration(summary['wall_s'])} from start to end; checkpoint "
      f"{checkpoint_dir}{results}")
  return summary


def _finish(run: Run, summary: dict[str, Any], started: float) -> dict[str, Any]:
  """The summary with the session's wall time, stored as WORKDIR/summary.json (which marks a complete run)."""
  summary = dict(summary, wall_s=round(time.time() - started, 1))
  if jax.process_index() == 0:
    (run.workdir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
  return summary
