"""A run's batches and its loss over a split, read by the loop, the start-up checks and the end-of-run
evaluation, and its parameters as the evaluation's scorer reads them (`local_variables`); it imports neither
the preflight nor the loop, so that each of them can import it."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from ssa_jax.data.pipeline import make_lm_iterator
from ssa_jax.runtime import sharding
from ssa_jax.train.context import RunContext

EvalStep = Callable[..., jax.Array]  # eval_step(variables, batch) -> the batch's mean next-token loss
# Evaluation steps dispatched ahead of the devices, at most. Unbounded, a held-out split of hundreds of batches
# queues hundreds of programs (and their input batches) at once; on a loaded CPU host with a forced multi-device
# mesh, XLA's collective rendezvous then timed out and aborted the process (seen in CI under two test workers).
MAX_BATCHES_IN_FLIGHT = 8


def data_iterator(ctx: RunContext, split: str, repeat: bool, max_batches: int | None = None,
                  num_streams: int | None = None):
  """The run's batch iterator over `split` (this process's rows); `num_streams` replaces config.data's."""
  data = ctx.data
  if num_streams is not None:
    data = ml_collections.ConfigDict(dict(data.to_dict(), num_streams=num_streams))
  t = ctx.train
  return make_lm_iterator(data, split=split, seq_len=t.seq_len, global_batch_size=t.global_batch_size,
                          process_index=jax.process_index(), process_count=jax.process_count(),
                          tokenizer=ctx.tokenizer, repeat=repeat, max_batches=max_batches)


def split_loss(ctx: RunContext, eval_step: EvalStep, variables: dict, split: str,
               max_batches: int | None = None) -> tuple[float | None, int]:
  """(mean next-token loss, batches) over `split`: its first `max_batches` batches, or all of it (None).
  Every batch is full, so the mean over batches is the mean over tokens."""
  losses = []
  with contextlib.closing(data_iterator(ctx, split, repeat=False, max_batches=max_batches)) as it:
    for batch in it:  # read back once at the end: no host-device sync per batch ...
      losses.append(eval_step(variables, sharding.global_batch(batch, ctx.mesh)))
      if len(losses) > MAX_BATCHES_IN_FLIGHT:  # ... but a bounded queue of dispatched steps (see the constant)
        losses[-MAX_BATCHES_IN_FLIGHT - 1].block_until_ready()
  return (float(np.mean(jax.device_get(losses))) if losses else None), len(losses)


def has_a_batch(ctx: RunContext, split: str, num_streams: int | None = None) -> bool:
  """Whether `split` yields at least one full batch (reads at most one), read by `num_streams` streams (None:
  config.data.num_streams). A split without files raises FileNotFoundError naming config.data.path."""
  with contextlib.closing(data_iterator(ctx, split, repeat=False, max_batches=1, num_streams=num_streams)) as it:
    return next(iter(it), None) is not None


def local_variables(variables: Any) -> Any:
  """`variables` readable on this process's devices: as they are in one process; with several, a replicated
  array's local copy, a sharded one gathered from every process (a collective: every process calls this)."""

  def local(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return x
    if x.sharding.is_fully_replicated:
      return x.addressable_data(0)
    return multihost_utils.process_allgather(x, tiled=True)

  return jax.tree.map(local, variables)
