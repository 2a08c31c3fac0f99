"""Batched, jitted, data-parallel log-likelihood scoring of token requests (lm-eval's left truncation).

lm-eval runs each request as its own padded row. We score the same numbers with far fewer tokens:
- Shared prefixes: the requests of one multiple-choice document share their context. The context goes into
  a row once, followed by each choice's tokens as a branch that sees the context and itself only (a tree
  mask); positions restart per branch, so RoPE, learned positions and SSA's log(n) see what a separate row
  would. Requests with identical (truncated) context tokens share it.
- Packing: several such units (any task, rolling windows included) fill one row, each unit blind to the
  others, so padding is a few percent instead of lm-eval's per-batch padding to the longest request.
- The LM head runs only where a token is predicted (once for all the branches of a context), never on the
  full (B, T, V) logits: with a 50k vocabulary it costs as much as several layers a token.
Rows have a few fixed lengths and batches a few row counts (powers of two), so few shapes compile.
Batches are split over the mesh axis 'data' of the local devices (ssa_jax.runtime.sharding.make_mesh); only
per-request sums come back to the host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import defaultdict
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from ssa_jax.evaluate.requests import TokenRequest
from ssa_jax.model.params import lm_head
from ssa_jax.runtime.sharding import make_mesh


def bucket_lengths(max_length: int, smallest: int = 32) -> list[int]:
  """Powers of two from `smallest` and the midpoints between them (x1.5) below max_length, then max_length."""
  out, n = [], smallest
  while n < max_length:
    out += [m for m in (n, n * 3 // 2) if m < max_length]
    n *= 2
  return out + [max_length]


def _pow2(n: int) -> int:
  return 1 << max(int(n) - 1, 0).bit_length()


@dataclasses.dataclass
class Unit:
  """A shared context and the requests continuing it: one contiguous, self-contained piece of a row.

  `context` ends with the token that predicts each branch's first continuation token; branch i holds the
  rest of request `requests[i]`'s input (its continuation minus the last token), and so has n_cont - 1 tokens.
  """

  context: list[int]
  requests: list[int] = dataclasses.field(default_factory=list)
  branches: list[list[int]] = dataclasses.field(default_factory=list)

  @property
  def length(self) -> int:
    return len(self.context) + sum(len(b) for b in self.branches)

  @property
  def heads(self) -> int:
    """Positions whose LM-head output is needed: the context's last token (shared) and every branch token."""
    return 1 + sum(len(b) for b in self.branches)


def make_units(requests: Sequence[TokenRequest], max_length: int) -> list[Unit]:
  """Requests grouped by identical context tokens (after truncation); units never exceed max_length tokens."""
  by_context: dict[tuple[int, ...], Unit] = {}
  units = []
  for k, req in enumerate(requests):
    # lm-eval's input: (ctx + cont)[-(max_length + 1):][:-1], its last len(cont) positions scored
    inp, n_cont = (list(req.context) + list(req.continuation))[-(max_length + 1):][:-1], len(req.continuation)
    split = len(inp) - (n_cont - 1)
    context, branch = tuple(inp[:split]), inp[split:]
    unit = by_context.get(context)
    if unit is None or unit.length + len(branch) > max_length:
      unit = by_context[context] = Unit(list(context))
      units.append(unit)
    unit.requests.append(k)
    unit.branches.append(branch)
  return units


def pack_rows(units: Sequence[Unit], row_length: int) -> list[list[Unit]]:
  """First-fit decreasing: units (each <= row_length tokens) into as few rows of `row_length` as it finds."""
  rows: list[list[Unit]] = []
  free: list[int] = []
  for unit in sorted(units, key=lambda u: -u.length):
    for r, space in enumerate(free):
      if unit.length <= space:
        rows[r].append(unit)
        free[r] -= unit.length
        break
    else:
      rows.append([unit])
      free.append(row_length - unit.length)
  return rows


@dataclasses.dataclass
class RowBatch:
  """Host arrays of one batch: R packed rows of T tokens, split into C contiguous blocks (one a device).

  Each device's LM-head positions are flattened over its rows (N of them, padding included), so that the
  head runs on about as many positions as are predicted; E = N + Q scored entries (the branches of a unit
  share the position before them) and Q request slots a device. (Shape letters: ssa_jax/model/config.py.)
  """

  tokens_RT: np.ndarray
  positions_RT: np.ndarray
  segment_RT: np.ndarray  # unit index in the row + 1; 0 = padding
  branch_RT: np.ndarray  # 0 = the unit's shared context, i + 1 = its branch i
  head_CN: np.ndarray  # local_row * T + t of each position that goes through the LM head
  head_of_CE: np.ndarray  # which of the N head positions predicts the entry's target
  target_CE: np.ndarray
  slot_CE: np.ndarray  # request slot on the device; Q = unused
  request_CQ: np.ndarray  # request index of each slot; -1 = unused


def head_count(rows: Sequence[Sequence[Unit]], devices: int) -> tuple[int, int]:
  """(most head positions, most requests) on one device when `rows` are dealt round-robin to `devices`."""
  heads, reqs = [0] * devices, [0] * devices
  for j, row in enumerate(rows):
    heads[j % devices] += sum(u.heads for u in row)
    reqs[j % devices] += sum(len(u.requests) for u in row)
  return max(heads), max(reqs)


def build_batch(rows: Sequence[Sequence[Unit]], requests: Sequence[TokenRequest], n_rows: int, T: int, C: int,
                N: int, Q: int) -> RowBatch:
  """Lays out `rows` (padded to n_rows, dealt round-robin to C devices); see RowBatch."""
  E, per_device = N + Q, n_rows // C
  b = RowBatch(*(np.zeros((n_rows, T), np.int32) for _ in range(4)), np.zeros((C, N), np.int32),
               np.zeros((C, E), np.int32), np.zeros((C, E), np.int32), np.full((C, E), Q, np.int32),
               np.full((C, Q), -1, np.int64))
  cursor = [[0, 0, 0] for _ in range(C)]  # per device: head positions, entries, slots used
  for j, row in enumerate(rows):
    d, local = j % C, j // C
    r, base = d * per_device + local, local * T
    u, e, s = cursor[d]
    t = 0
    for u_i, unit in enumerate(row):
      c = len(unit.context)
      b.tokens_RT[r, t:t + c] = unit.context
      b.positions_RT[r, t:t + c] = np.arange(c)
      b.segment_RT[r, t:t + c] = u_i + 1
      b.head_CN[d, u] = base + t + c - 1
      shared_head = u
      t, u = t + c, u + 1
      for i, (req, branch) in enumerate(zip(unit.requests, unit.branches)):
        n = len(branch)
        b.tokens_RT[r, t:t + n] = branch
        b.positions_RT[r, t:t + n] = np.arange(c, c + n)
        b.segment_RT[r, t:t + n] = u_i + 1
        b.branch_RT[r, t:t + n] = i + 1
        b.head_CN[d, u:u + n] = base + np.arange(t, t + n)
        b.head_of_CE[d, e:e + n + 1] = [shared_head, *range(u, u + n)]
        b.target_CE[d, e:e + n + 1] = requests[req].continuation[-(n + 1):]
        b.slot_CE[d, e:e + n + 1] = s
        b.request_CQ[d, s] = req
        t, u, e, s = t + n, u + n, e + n + 1, s + 1
    cursor[d] = [u, e, s]
  return b


def _round_up(n: int) -> int:
  """n rounded up to a sixteenth of the power of two above it (<= 6% padding, few distinct shapes)."""
  step = max(_pow2(n) // 16, 1)
  return -(-n // step) * step


def tree_mask(segment_BT, branch_BT):
  """Query t sees key s: same unit, s <= t, and s in the shared context or in t's own branch (diagonal always)."""
  T = segment_BT.shape[1]
  causal_TT = jnp.tril(jnp.ones((T, T), bool))
  same_unit = (segment_BT[:, :, None] == segment_BT[:, None, :]) & (segment_BT[:, None, :] > 0)
  visible = (branch_BT[:, None, :] == 0) | (branch_BT[:, None, :] == branch_BT[:, :, None])
  return (same_unit & visible & causal_TT[None]) | jnp.eye(T, dtype=bool)[None]


@dataclasses.dataclass
class ScoreStats:
  """Totals across calls (for the results' tokens/s)."""

  requests: int = 0
  tokens: int = 0  # tokens lm-eval would run (each request's own input)
  computed_tokens: int = 0  # tokens in our rows after prefix sharing, without padding
  padded_tokens: int = 0  # row slots, padding included
  head_positions: int = 0  # positions through the LM head, padding included (lm-eval: every token)
  seconds: float = 0.0


class Scorer:
  """Scores token requests with the model on packed, prefix-sharing rows; see the module doc.

  `batch_size`: rows per batch at max_length; shorter rows come proportionally more per batch (same tokens).
  `pack_length`: the row length that short units are packed into (min(max_length, pack_length)).
  `matmul_precision`: 'auto' = 'highest' for float32 models (no TF32 on GPU), else the JAX default.
  """

  def __init__(self, model, variables: dict, max_length: int, batch_size: int = 16,
               matmul_precision: str | None = "auto", show_progress: bool = True, pack_length: int = 512):
    self.model = model
    self.max_length = int(max_length)
    self.mesh = make_mesh(dict(data=-1, fsdp=1, tensor=1), devices=jax.local_devices())  # batches over 'data' only
    self.n_devices = self.mesh.size
    self.batch_size = max(int(batch_size), 1)
    self.buckets = bucket_lengths(self.max_length, min(32, self.max_length))
    self.pack_length = min(int(pack_length), self.max_length)
    self.variables = jax.device_put(variables, NamedSharding(self.mesh, P()))
    self._batch_sharding = NamedSharding(self.mesh, P("data"))
    if matmul_precision == "auto":
      matmul_precision = "highest" if model.config.dtype == "float32" else None
    self.precision = matmul_precision
    self.show_progress = show_progress
    self.stats = ScoreStats()

    def score(variables, tokens_BT, positions_BT, segment_BT, branch_BT, head_CN, head_of_CE, target_CE, slot_CE, Q,
              causal):
      # causal: every row holds one request from position 0, so the plain causal kernel (cuDNN flash attention
      # on GPU, no (B, T, T) mask) gives the same result; long rows (rolling windows) are all like that.
      mask_BTT = None if causal else tree_mask(segment_BT, branch_BT)
      # The LM head runs only at the head positions: the final norm's output is captured and the full
      # (B, T, V) logits, left unused, are removed by XLA.
      _, state = model.apply(variables, tokens_BT, None if causal else positions_BT, mask_BTT=mask_BTT,
                             mutable=["intermediates"], capture_intermediates=lambda mdl, _: mdl.name == "final_norm")
      h_BTd = state["intermediates"]["final_norm"]["__call__"][0]
      C = head_CN.shape[0]
      h_CXd = h_BTd.reshape(C, -1, h_BTd.shape[-1])  # each device's rows, flattened
      logits_CNV = lm_head(variables["params"], model.config, jnp.take_along_axis(h_CXd, head_CN[..., None], axis=1))
      V = logits_CNV.shape[-1]
      max_CN = jnp.max(logits_CNV, axis=-1)
      lse_CE = jnp.take_along_axis(jax.nn.logsumexp(logits_CNV, axis=-1), head_of_CE, axis=1)
      target_logit_CE = jnp.take_along_axis(logits_CNV.reshape(C, -1), head_of_CE * V + target_CE, axis=1)
      used_CE = slot_CE < Q
      logprob_CE = jnp.where(used_CE, target_logit_CE - lse_CE, 0.0)
      # Greedy: the target's logit is the largest (lm-eval: argmax == target; they differ only on exact ties).
      missed_CE = used_CE & (target_logit_CE < jnp.take_along_axis(max_CN, head_of_CE, axis=1))
      per_slot = jax.vmap(lambda x, ids: jax.ops.segment_sum(x, ids, num_segments=Q))
      ll_CQ = per_slot(logprob_CE, slot_CE)
      misses_CQ = per_slot(missed_CE.astype(jnp.int32), slot_CE)
      return ll_CQ, misses_CQ == 0

    self._score = jax.jit(score, static_argnames=("Q", "causal"))

  def _row_length(self, unit_length: int) -> int:
    if unit_length <= self.pack_length:
      return self.pack_length
    return self.buckets[int(np.searchsorted(self.buckets, unit_length))]

  def _rows_per_batch(self, T: int, n: int) -> int:
    """Rows of a batch of length-T rows holding up to n rows: the cap, or (the last batch) n rounded up to
    a sixteenth of a power of two; a multiple of the devices."""
    cap = max(self.batch_size * self.max_length // T, self.batch_size)
    return -(-min(_round_up(n), cap) // self.n_devices) * self.n_devices

  def score(self, requests: Sequence[TokenRequest], desc: str = "scoring") -> tuple[np.ndarray, np.ndarray]:
    """(log-likelihood float64 [n], is_greedy bool [n]) of every request, in the given order."""
    n = len(requests)
    ll, greedy = np.zeros(n, np.float64), np.zeros(n, bool)
    if n == 0:
      return ll, greedy
    start = time.perf_counter()
    units = make_units(requests, self.max_length)
    by_length: dict[int, list[Unit]] = defaultdict(list)
    for unit in units:
      by_length[self._row_length(unit.length)].append(unit)
    # lm-eval's input of a request: (ctx + cont)[-(max_length + 1):][:-1].
    self.stats.tokens += sum(min(len(r.context) + len(r.continuation), self.max_length + 1) - 1 for r in requests)
    self.stats.computed_tokens += sum(u.length for u in units)
    pending = []
    bar = tqdm(total=n, desc=desc, unit="req", disable=not self.show_progress, leave=True, dynamic_ncols=True)
    with jax.default_matmul_precision(self.precision) if self.precision else contextlib.nullcontext():
      for T in sorted(by_length, reverse=True):  # longest rows first: memory problems show at once
        # Rows with the most head positions first, so that a batch's rows are alike.
        rows = sorted(pack_rows(by_length[T], T), key=lambda row: -sum(u.heads for u in row))
        C = self.n_devices
        i = 0
        while i < len(rows):
          n_rows = self._rows_per_batch(T, len(rows) - i)
          chunk = rows[i:i + n_rows]
          i += len(chunk)
          most_heads, most_requests = head_count(chunk, C)
          N, Q = _round_up(most_heads), _pow2(most_requests)
          b = build_batch(chunk, requests, n_rows, T, C, N, Q)
          self.stats.padded_tokens += n_rows * T
          self.stats.head_positions += C * N
          arrays = (b.tokens_RT, b.positions_RT, b.segment_RT, b.branch_RT, b.head_CN, b.head_of_CE, b.target_CE,
                    b.slot_CE)
          causal = all(len(row) == 1 and len(row[0].branches) == 1 for row in chunk)
          out = self._score(self.variables, *(jax.device_put(a, self._batch_sharding) for a in arrays), Q=Q,
                            causal=causal)
          pending.append((b.request_CQ, out))
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
    request_CQ, (ll_CQ, greedy_CQ) = item
    ll_CQ, greedy_CQ = jax.device_get((ll_CQ, greedy_CQ))
    used = request_CQ >= 0
    ll[request_CQ[used]] = np.asarray(ll_CQ, np.float64)[used]
    greedy[request_CQ[used]] = np.asarray(greedy_CQ)[used]
    bar.update(int(used.sum()))
