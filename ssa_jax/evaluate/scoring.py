"""Batched, jitted, data-parallel log-likelihood scoring of token requests (lm-eval's left truncation).

Requests are sorted by length and padded to a few bucket lengths (powers of two up to max_length) and row
counts (powers of two), so only a handful of shapes compile. Batches are split over a 1-D mesh of the local
devices; only per-request sums come back to the host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from ssa_jax.evaluate.requests import TokenRequest


def bucket_lengths(max_length: int, smallest: int = 32) -> list[int]:
  """Powers of two from `smallest` and the midpoints between them (x1.5) below max_length, then max_length."""
  out, n = [], smallest
  while n < max_length:
    out += [m for m in (n, n * 3 // 2) if m < max_length]
    n *= 2
  return out + [max_length]


def lm_head(params, h_BKd):
  """float32 logits from final hidden states: the untied `lm_head` or the tied input embedding."""
  if "lm_head" in params:
    kernel_dV = params["lm_head"]["kernel"]
  else:
    kernel_dV = params["embed"]["embedding"].T
  return jnp.dot(h_BKd, kernel_dV.astype(h_BKd.dtype)).astype(jnp.float32)


def model_input(req: TokenRequest, max_length: int) -> tuple[list[int], int]:
  """(input ids, number of scored positions): (ctx + cont)[-(max_length + 1):][:-1], the last len(cont) scored."""
  whole = (list(req.context) + list(req.continuation))[-(max_length + 1):]
  return whole[:-1], len(req.continuation)


@dataclasses.dataclass
class ScoreStats:
  """Totals across calls (for the results' tokens/s)."""

  requests: int = 0
  tokens: int = 0  # real (unpadded) input tokens
  padded_tokens: int = 0
  seconds: float = 0.0


class Scorer:
  """Scores token requests with `model.apply({'params': params}, tokens_BT)`; see the module doc."""

  def __init__(self, model, params, max_length: int, batch_size: int = 16, devices=None,
               matmul_precision: str | None = None, smallest_bucket: int = 32, show_progress: bool = True):
    self.model = model
    self.max_length = int(max_length)
    devices = list(devices or jax.local_devices())
    self.mesh = Mesh(np.array(devices), ("data",))
    self.n_devices = len(devices)
    # batch_size rows at the longest bucket; shorter buckets take proportionally more rows (same tokens).
    self.batch_size = max(int(batch_size), 1)
    self.buckets = bucket_lengths(self.max_length, min(smallest_bucket, self.max_length))
    self.params = jax.device_put(params, NamedSharding(self.mesh, P()))
    self._batch_sharding = NamedSharding(self.mesh, P("data"))
    self.precision = matmul_precision
    self.show_progress = show_progress
    self.stats = ScoreStats()

    def score(params, tokens_BT, positions_BK, targets_BK, mask_BK):
      # The LM head runs only where a continuation token is scored: the final norm's output is captured and
      # the full (B, T, V) logits, left unused, are removed by XLA.
      _, state = model.apply({"params": params}, tokens_BT, mutable=["intermediates"],
                             capture_intermediates=lambda mdl, _: mdl.name == "final_norm")
      h_BTd = state["intermediates"]["final_norm"]["__call__"][0]
      h_BKd = jnp.take_along_axis(h_BTd, positions_BK[..., None], axis=1)
      logits_BKV = lm_head(params, h_BKd)
      lse_BK = jax.nn.logsumexp(logits_BKV, axis=-1)
      target_logit_BK = jnp.take_along_axis(logits_BKV, targets_BK[..., None], axis=-1)[..., 0]
      logprob_BK = jnp.where(mask_BK, target_logit_BK - lse_BK, 0.0)
      greedy_BK = jnp.argmax(logits_BKV, axis=-1) == targets_BK
      return logprob_BK.sum(-1), jnp.all(greedy_BK | ~mask_BK, axis=-1)

    self._score = jax.jit(score)

  def _rows_for(self, bucket: int, n: int) -> int:
    """Rows of a batch at `bucket` length holding up to `n` requests: a power of two, a multiple of devices."""
    cap = max(self.batch_size * self.max_length // bucket, self.batch_size)
    rows = min(1 << max(n - 1, 0).bit_length(), cap)
    return -(-rows // self.n_devices) * self.n_devices

  def score(self, requests: Sequence[TokenRequest], desc: str = "scoring") -> tuple[np.ndarray, np.ndarray]:
    """(log-likelihood float64 [n], is_greedy bool [n]) of every request, in the given order."""
    n = len(requests)
    ll = np.zeros(n, np.float64)
    greedy = np.zeros(n, bool)
    if n == 0:
      return ll, greedy
    inputs = [model_input(r, self.max_length) for r in requests]
    lengths = np.array([len(x[0]) for x in inputs])
    order = np.argsort(-lengths, kind="stable")  # longest first: memory problems show at once
    bucket_of = np.searchsorted(self.buckets, lengths)
    start = time.perf_counter()
    pending = []
    bar = tqdm(total=n, desc=desc, unit="req", disable=not self.show_progress, leave=True, dynamic_ncols=True)
    with jax.default_matmul_precision(self.precision) if self.precision else contextlib.nullcontext():
      for b in sorted(set(bucket_of.tolist()), reverse=True):
        T = self.buckets[b]
        idx = order[bucket_of[order] == b]
        # Within a bucket, longest continuations first: a batch's scored positions K (a power of two, so few
        # shapes compile) then fit its rows tightly, and the LM head runs on rows x K positions only.
        idx = idx[np.argsort([-inputs[k][1] for k in idx], kind="stable")]
        i = 0
        while i < len(idx):
          rows = self._rows_for(T, len(idx) - i)
          chunk = idx[i:i + rows]
          i += len(chunk)
          K = min(1 << max(inputs[chunk[0]][1] - 1, 0).bit_length(), T)
          tokens = np.zeros((rows, T), np.int32)
          positions = np.zeros((rows, K), np.int32)
          targets = np.zeros((rows, K), np.int32)
          mask = np.zeros((rows, K), bool)
          for r, k in enumerate(chunk):
            inp, n_cont = inputs[k]
            L = len(inp)
            tokens[r, :L] = inp
            positions[r, :n_cont] = np.arange(L - n_cont, L)
            targets[r, :n_cont] = requests[k].continuation[-n_cont:]
            mask[r, :n_cont] = True
            self.stats.tokens += L
          self.stats.padded_tokens += rows * T
          batch = (tokens, positions, targets, mask)
          out = self._score(self.params, *(jax.device_put(a, self._batch_sharding) for a in batch))
          pending.append((chunk, out))
          if len(pending) > 2:  # keep the device busy while the host prepares the next batch
            self._collect(pending.pop(0), ll, greedy, bar)
      while pending:
        self._collect(pending.pop(0), ll, greedy, bar)
    bar.close()
    self.stats.requests += n
    self.stats.seconds += time.perf_counter() - start
    return ll, greedy

  @staticmethod
  def _collect(item, ll, greedy, bar):
    chunk, (ll_B, greedy_B) = item
    ll_B, greedy_B = jax.device_get((ll_B, greedy_B))
    ll[chunk] = np.asarray(ll_B[:len(chunk)], np.float64)
    greedy[chunk] = greedy_B[:len(chunk)]
    bar.update(len(chunk))
