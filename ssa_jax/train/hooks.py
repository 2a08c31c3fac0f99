"""What the training loop does besides the step, one object each: the loop's own state between steps
(`LoopState`), the log step's record (`MetricLog`: metrics.jsonl, TensorBoard, W&B), validation (`Validation`)
and saving (`save_checkpoint`), called by loop.py in order; profiling.py's `Profiler` traces a few steps."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax

from ssa_jax.data.pipeline import sum_over_processes
from ssa_jax.formats import checkpoint
from ssa_jax.train import metrics as metrics_lib
from ssa_jax.train.context import RunContext
from ssa_jax.train.evaluation import EvalStep, split_loss
from ssa_jax.train.metrics import log, perplexity
from ssa_jax.train.state import TrainState
from ssa_jax.train.wandb_run import WandbRun


@dataclasses.dataclass
class LoopState:
  """What the loop carries from step to step on the host; the arrays stay on the devices until read."""

  state: TrainState
  counts: dict[str, jax.Array]  # the non-finite step counters (step.nonfinite_counts)
  step: int  # steps done: reading state.step would wait for the devices
  data_state: dict  # the training iterator's state after the batches trained on so far
  last_loss: Any = None  # the latest step's loss (a device value, read once at the end)
  previous_loss: Any = None  # the step before's, waited for before the next dispatch


class MetricLog:
  """A log step: the record in metrics.jsonl / TensorBoard, the console line, the non-finite steps said in
  one line when there are new ones. The only place the loop reads device values while it trains."""

  def __init__(self, ctx: RunContext, start: int, run_config: dict[str, Any]):
    t = ctx.train
    wandb_run = (WandbRun(ctx.workdir, t.wandb_project, t.wandb_name, t.wandb_entity, run_config)
                 if t.wandb and jax.process_index() == 0 else None)
    self.writer = metrics_lib.MetricsWriter(ctx.workdir, t.tensorboard, resume_step=start, wandb_run=wandb_run)
    self.progress = metrics_lib.ConsoleProgress(t.steps, start)
    self._t, self._devices = t, ctx.mesh.size
    self._flops_per_token = metrics_lib.training_flops_per_token(ctx.model_cfg, t.seq_len)
    self._peak = metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind)
    self._last_time, self._last_step, self._nonfinite_said = time.time(), start, 0

  def __call__(self, step: int, metrics: dict[str, jax.Array], counts: dict[str, jax.Array],
               data_stats: dict[str, int]) -> str | None:
    """Logs `step`; returns why training must stop (too many non-finite steps in a row), else None."""
    m, c = jax.device_get((metrics, counts))
    tps = self._t.tokens_per_step * (step - self._last_step) / (time.time() - self._last_time)
    record = {"step": step, "loss": float(m["loss"]), "lr": float(m["lr"]), "grad_norm": float(m["grad_norm"]),
              "tokens_per_s": tps, "tokens_per_s_per_device": tps / self._devices,
              "mfu": metrics_lib.mfu(tps, self._flops_per_token, self._peak, self._devices),
              "nonfinite_total": int(c["total"]),
              **{k: v for k, v in m.items() if k.startswith("tau_") or "_norm/" in k},
              # a collective, at the same steps on every process
              **{f"data/{k}": v for k, v in sum_over_processes(data_stats).items()}}
    self.writer.write(record)
    self.progress.line(step, record)
    if int(c["total"]) > self._nonfinite_said:
      log(f"steps {self._last_step + 1}-{step}: {int(c['total']) - self._nonfinite_said} non-finite loss or "
          f"gradient, update skipped ({int(c['in_a_row'])} in a row at step {step}, at most {int(c['longest'])})")
      self._nonfinite_said = int(c["total"])
    self._last_time, self._last_step = time.time(), step
    if int(c["longest"]) >= self._t.max_nonfinite_steps:
      return f"{int(c['longest'])} non-finite steps in a row"
    return None

  def close(self) -> None:
    self.writer.close()


@dataclasses.dataclass(frozen=True)
class Validation:
  """The mean loss over the first config.train.eval_batches batches of the validation split, recorded."""

  ctx: RunContext
  eval_step: EvalStep
  writer: metrics_lib.MetricsWriter

  def __call__(self, step: int, variables, say: bool = True) -> dict[str, float]:
    """{'val_loss', 'val_ppl'} at `step` (written to metrics.jsonl; `say`: and to the console); {} when off."""
    n = self.ctx.train.eval_batches
    val = split_loss(self.ctx, self.eval_step, variables, self.ctx.data.validation_split, n)[0] if n > 0 else None
    if val is None:
      return {}
    out = {"val_loss": val, "val_ppl": perplexity(val)}
    self.writer.write({"step": step, **out})
    if say:
      log(f"step {step}: validation loss {val:.4f} ppl {out['val_ppl']:.2f}")
    return out


def save_checkpoint(mngr, run_config: dict[str, Any], s: LoopState, force: bool) -> None:
  """Saves step `s.step` (parameters, optimizer, every process's data position, the run config) unless it is
  saved already (the last step a multiple of checkpoint_every)."""
  if mngr.latest_step() != s.step:
    checkpoint.save_train_state(mngr, s.state, checkpoint.gather_json(s.data_state), run_config, force=force,
                                step=s.step)
