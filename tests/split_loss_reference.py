"""An independent mean next-token loss of a run's checkpoint over a split, for the end-of-run evaluation tests.

The windows come from the data pipeline as the run read them (one process, the run's data config, seq_len
and batch size: the same split and windowing); everything after that is written here: the model's full
float32 logits on one device, a log-softmax in float64 numpy, the target's negative log-likelihood averaged
over every position of every window. The run computes the same number on its mesh, with the LM head applied
chunk by chunk and a float32 logsumexp (ssa_jax/train/loss.py), averaged per batch.
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import numpy as np

from ssa_jax.data.pipeline import make_lm_iterator
from ssa_jax.formats import checkpoint


def log_softmax_nll_BT(logits_BTV: np.ndarray, targets_BT: np.ndarray) -> np.ndarray:
  """-log softmax(logits)[target] per position, in float64: x - max - log(sum(exp(x - max)))."""
  x_BTV = np.asarray(logits_BTV, np.float64)
  shifted_BTV = x_BTV - x_BTV.max(axis=-1, keepdims=True)
  log_probs_BTV = shifted_BTV - np.log(np.exp(shifted_BTV).sum(axis=-1, keepdims=True))
  return -np.take_along_axis(log_probs_BTV, targets_BT[..., None].astype(np.int64), axis=-1)[..., 0]


def windows(config: ml_collections.ConfigDict, split: str, max_batches: int | None = None) -> np.ndarray:
  """Every window (seq_len + 1 tokens) of the run's batches of `split`, in one process: (N, seq_len + 1)."""
  t = config.train
  it = make_lm_iterator(config.data, split=split, seq_len=t.seq_len, global_batch_size=t.global_batch_size,
                        process_index=0, process_count=1, repeat=False, max_batches=max_batches)
  try:
    return np.concatenate([b["tokens"] for b in it])
  finally:
    it.close()


def checkpoint_loss(workdir: Path, windows_NT1: np.ndarray, rows_per_call: int = 64) -> float:
  """Mean next-token loss of the latest checkpoint in `workdir` over `windows_NT1`, every position weighted
  alike."""
  model, variables, _ = checkpoint.load_model(Path(workdir) / "checkpoints")
  forward = jax.jit(model.apply)
  nll = []
  for i in range(0, len(windows_NT1), rows_per_call):
    chunk_BT1 = windows_NT1[i:i + rows_per_call]
    logits_BTV = np.asarray(jax.device_get(forward(variables, chunk_BT1[:, :-1])))
    nll.append(log_softmax_nll_BT(logits_BTV, chunk_BT1[:, 1:]))
  return float(np.concatenate(nll).mean())
