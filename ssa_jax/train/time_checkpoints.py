"""Which steps the loop checkpoints: every config.train.checkpoint_every steps, and, with
config.train.checkpoint_every_minutes, the first step that ends at least that many minutes after the last save
(or the session's start).

One process reads its own clock once a step, on the host: no device value is read, so the loop keeps its one
step of lookahead. Several processes must save the same step (a save is a collective), so process 0's clock
decides and every process learns the decision from one int32 summed over a (processes, local devices) mesh, the
computation of multihost_utils.broadcast_one_to_all split in two: dispatched after step k, read after step k + 1,
when the loop has already waited for step k, which the broadcast follows on the devices. The cost: one scalar
all-reduce a step and no extra host wait; the save comes one step after process 0's clock passed the mark.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def clock() -> float:
  """Seconds on a monotonic clock: the schedule's (tests replace it to pass minutes at once)."""
  return time.monotonic()


class DeviceBroadcast:
  """Process 0's flag to every process: `send` dispatches it (every process, the same steps), `receive` reads
  it. broadcast_one_to_all's computation, without its read: the host does not wait for the devices."""

  def __init__(self):
    devices = np.array(jax.devices()).reshape(jax.process_count(), jax.local_device_count())
    self._mesh = Mesh(devices, ("processes", "local_devices"))
    self._source = jax.process_index() == 0
    self._sum = jax.jit(lambda x_P: jnp.sum(x_P, axis=0), out_shardings=NamedSharding(self._mesh, P()))

  def send(self, flag: bool) -> jax.Array:
    """Dispatches the sum over processes of [flag] from process 0 and [0] from the others."""
    mine_1 = np.array([int(flag) if self._source else 0], np.int32)
    return self._sum(multihost_utils.host_local_array_to_global_array(mine_1, self._mesh, P("processes")))

  @staticmethod
  def receive(sent: jax.Array) -> bool:
    """The flag `send` dispatched (waits for that computation only)."""
    return bool(np.asarray(sent.addressable_data(0)))


class CheckpointSchedule:
  """`due(step)` after each step, on every process: whether the loop saves that step.

  `process_count` (default: jax's) above 1 takes the broadcast path; `broadcast` replaces DeviceBroadcast."""

  def __init__(self, every_steps: int, every_minutes: float, process_count: int | None = None,
               broadcast: DeviceBroadcast | None = None):
    self._every_steps, self._every_s = every_steps, 60.0 * every_minutes
    several = (jax.process_count() if process_count is None else process_count) > 1
    self._broadcast = (broadcast or DeviceBroadcast()) if several and self._every_s > 0 else None
    self._pending: jax.Array | None = None  # process 0's decision sent after the previous step
    self._last_save = clock()

  def due(self, step: int) -> bool:
    """Whether `step` (just finished) is saved: a multiple of every_steps, or every_minutes since the last save."""
    now = clock()
    save = bool(self._every_steps) and step % self._every_steps == 0
    if self._every_s > 0:
      save = self._time_is_up(now) or save
    if save:
      self._last_save = now
    if self._broadcast is not None:  # after the reset above: the next decision counts from this save
      self._pending = self._broadcast.send(now - self._last_save >= self._every_s)
    return save

  def _time_is_up(self, now: float) -> bool:
    if self._broadcast is None:
      return now - self._last_save >= self._every_s
    pending, self._pending = self._pending, None
    return pending is not None and self._broadcast.receive(pending)
