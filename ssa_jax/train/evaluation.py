"""A run's batches and its loss over a split: what the loop (validation), the start-up checks (is there a
validation batch?) and the end-of-run evaluation (held-out perplexity) read the data with.

`run` is the preflight.Run of the training run (its config, mesh and tokenizer); this module imports neither
the preflight nor the loop, so that each of them can import it.
"""

from __future__ import annotations

import jax
import numpy as np

from ssa_jax.runtime import sharding


def data_iterator(run, split: str, repeat: bool, max_batches: int | None = None):
  """The run's batch iterator over `split` (this process's rows)."""
  from ssa_jax.data.pipeline import make_lm_iterator

  t = run.config.train
  return make_lm_iterator(run.config.data, split=split, seq_len=t.seq_len, global_batch_size=t.global_batch_size,
                          process_index=jax.process_index(), process_count=jax.process_count(),
                          tokenizer=run.tokenizer, repeat=repeat, max_batches=max_batches)


def split_loss(run, eval_step, params, split: str, max_batches: int | None = None) -> tuple[float | None, int]:
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


def validation_loss(run, eval_step, params) -> float | None:
  """Mean next-token loss over the first `eval_batches` batches of the validation split."""
  t = run.config.train
  if t.eval_batches <= 0:
    return None
  return split_loss(run, eval_step, params, run.config.data.validation_split, t.eval_batches)[0]


def has_a_batch(run, split: str) -> bool:
  """Whether `split` yields at least one full batch (reads at most one). A split without files raises
  FileNotFoundError naming config.data.path."""
  it = data_iterator(run, split, repeat=False, max_batches=1)
  try:
    return next(iter(it), None) is not None
  finally:
    it.close()
