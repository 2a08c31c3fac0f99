"""A jax.profiler trace of a few training steps (config.train.profile_start_step / profile_num_steps).

The trace starts before the step numbered `profile_start_step + 1` is dispatched (after `profile_start_step`
steps: skip the first to keep compilation out of it) and stops once the last traced step finished on the
devices. Every process writes its own host's trace under WORKDIR/profile; TensorBoard's profile plugin,
xprof or Perfetto open it.
"""

from __future__ import annotations

import jax
from etils import epath

from ssa_jax.train.metrics import log


class Profiler:
  """Starts and stops the trace around steps (start, start + num_steps]; does nothing when num_steps is 0."""

  def __init__(self, workdir: epath.Path, start_step: int, num_steps: int):
    self.directory = workdir / "profile"
    self._start, self._end = start_step, start_step + num_steps
    self._tracing, self._last = False, start_step

  def before_step(self, steps_done: int) -> None:
    """Starts the trace when the next step is the first to trace."""
    if self._end > self._start and steps_done == self._start:
      jax.profiler.start_trace(str(self.directory))
      self._tracing = True

  def after_step(self, steps_done: int, step_output) -> None:
    """Stops the trace once the last traced step's `step_output` is ready."""
    if self._tracing:
      self._last = steps_done
    if self._tracing and steps_done >= self._end:
      jax.block_until_ready(step_output)
      self.close()

  def close(self) -> None:
    """Stops a trace under way (a run that ends or stops inside the traced steps) and says where it is."""
    if not self._tracing:
      return
    jax.profiler.stop_trace()
    self._tracing = False
    log(f"profile of steps {self._start + 1}-{self._last}: {self.directory} (open with `tensorboard "
        f"--logdir={self.directory}`, Profile tab, or xprof / ui.perfetto.dev on the .trace.json.gz)")
