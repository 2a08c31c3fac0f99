"""The LM batch iterator: streams -> global batch rows -> this process's rows, prefetched, resumable.

How the global batch is laid out (why it does not depend on the process count P):
  S reader streams (`config.data.num_streams`) each read a disjoint share of the split's files
  (packing.stream_files). Global row j of every batch comes from stream j // (B / S), the streams taking
  B / S consecutive windows each per step. Process p owns the rows [p B/P, (p+1) B/P), i.e. the whole
  streams [p S/P, (p+1) S/P), and reads only their files. So the global batch for a fixed seed depends on
  (files, seed, S, B, seq_len) only: any P that divides S gives the same global batch. It needs
  B % S == 0 and S % P == 0; with F < S files, streams share files and split their records.
  num_streams = 0 (auto) picks the largest multiple of P that divides B and is <= max(8, P): for
  power-of-two B and P <= min(8, B) that is min(B, 8) whatever P, so the batch is P-independent there;
  past that, set num_streams explicitly to a multiple of every P you will use.

End of a non-repeating iterator (validation): every process stops at the same batch, the first at which any
of the S streams (its own or another process's) runs out, or `max_batches`. A process counts the windows of
the other processes' streams by tokenizing them once (bounded by `max_batches`, cached for the run), so the
count is the same on every process and equals a one-process run's, with no collective.

State (`get_state`, JSON): per local stream its exact position and counters (packing.Stream.state), keyed
by global stream id, plus the layout it belongs to. `set_state` accepts a state holding at least the
local streams, so the per-process states merged (dict union of "streams") restore onto another P.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import queue
import threading
from typing import Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from ssa_jax.data import demo
from ssa_jax.data.array_record import ArrayRecordIterator
from ssa_jax.data.config import resolve_paths, validate_data_config
from ssa_jax.data.packing import Stream, check_documents
from ssa_jax.data.sources import list_files
from ssa_jax.data.tokenizer import Tokenizer, load_tokenizer
from ssa_jax.errors import ConfigError

_STATE_VERSION = 1
_END = object()
# Window counts of non-repeating streams, keyed by everything they depend on: validation iterators are
# rebuilt at every evaluation, the count is needed once per run.
_WINDOW_COUNTS: dict[tuple, int] = {}


def resolve_num_streams(requested: int, global_batch_size: int, process_count: int) -> int:
  """The stream count S (see module docstring); raises ConfigError naming the field when invalid."""
  b, p = global_batch_size, process_count
  if b % p:
    raise ConfigError(f"global_batch_size: {b} is not divisible by the process count {p}")
  if requested == 0:
    return max(s for s in range(p, max(8, p) + 1, p) if b % s == 0)
  if b % requested or requested % p:
    raise ConfigError(f"config.data.num_streams: {requested} must divide the global batch size {b} "
                      f"and be a multiple of the process count {p}")
  return requested


def put_until_stopped(q: queue.Queue, item, stop: threading.Event) -> bool:
  """Puts `item` on the bounded queue `q`, waiting for room; False (not put) once `stop` is set."""
  while not stop.is_set():
    try:
      q.put(item, timeout=0.1)
      return True
    except queue.Full:
      continue
  return False


class LMIterator:
  """`next(it)` -> {"tokens": int32 [B / P, seq_len + 1]}; `get_state`/`set_state` resume exactly."""

  def __init__(self, data_cfg: ml_collections.ConfigDict, *, files: list[str], split: str, seq_len: int,
               global_batch_size: int, process_index: int, process_count: int, tokenizer: Tokenizer,
               repeat: bool, max_batches: int | None = None):
    self._cfg, self._files, self._split, self._tok, self._repeat = data_cfg, files, split, tokenizer, repeat
    self._window = seq_len + 1
    self._batch = global_batch_size
    self.num_streams = resolve_num_streams(data_cfg.num_streams, global_batch_size, process_count)
    per_process = self.num_streams // process_count
    self._local = list(range(process_index * per_process, (process_index + 1) * per_process))
    self._rows_per_stream = global_batch_size // self.num_streams
    self._logged: set = set()
    self._thread = None
    self._max_batches = max_batches
    self.num_batches = self._global_end()  # None: no end known in advance (a repeating iterator).
    self._start({"step": 0, "streams": {}})

  def _layout(self) -> dict:
    return {"version": _STATE_VERSION, "split": self._split, "seed": self._cfg.seed,
            "num_streams": self.num_streams, "window": self._window, "global_batch_size": self._batch,
            "num_files": len(self._files)}

  def _new_stream(self, stream_id: int, executor, state: dict | None, repeat: bool) -> Stream:
    cfg = self._cfg
    return Stream(stream_id=stream_id, files=self._files, fmt=cfg.format, num_streams=self.num_streams,
                  seed=cfg.seed, tokenizer=self._tok, window=self._window, mixture=dict(cfg.mixture),
                  exclude=list(cfg.exclude), docs_per_chunk=cfg.docs_per_chunk, executor=executor,
                  repeat=repeat, state=state, logged=self._logged)

  def _count_windows(self, stream_id: int, max_windows: int | None) -> int:
    cfg = self._cfg
    key = (tuple(self._files), cfg.format, self.num_streams, cfg.seed, self._window,
           tuple(sorted(dict(cfg.mixture).items())), tuple(sorted(cfg.exclude)), type(self._tok).__name__,
           getattr(self._tok, "path", None) or id(self._tok), stream_id, max_windows)
    if key not in _WINDOW_COUNTS:  # a race only counts twice (dict reads and writes are atomic)
      _WINDOW_COUNTS[key] = self._new_stream(stream_id, None, None, repeat=False).count_windows(max_windows)
    return _WINDOW_COUNTS[key]

  def _global_end(self) -> int | None:
    """The batch count at which every process stops (see the module docstring); None = no end known."""
    if self._repeat:
      return self._max_batches
    others = [s for s in range(self.num_streams) if s not in self._local]
    limit = None if self._max_batches is None else self._max_batches * self._rows_per_stream
    with concurrent.futures.ThreadPoolExecutor(self._cfg.num_threads, thread_name_prefix="ssa_data_count") as pool:
      counts = list(pool.map(lambda s: self._count_windows(s, limit), others))
    ends = [c // self._rows_per_stream for c in counts] + ([self._max_batches] if self._max_batches else [])
    # The local streams end by themselves (the producer stops at the first of them to run out).
    return min(ends) if ends else None

  def get_state(self) -> dict:
    """JSON-serialisable state after the last batch returned by `next`."""
    return copy.deepcopy(self._state)

  def set_state(self, state: dict) -> None:
    """Continue right after the batch whose `get_state()` this is (also one merged across processes)."""
    for key, value in self._layout().items():
      if state.get(key) != value:
        raise ValueError(f"data iterator state: {key}={state.get(key)!r} does not match this iterator's "
                         f"{value!r} (was it saved with another data config, split or batch layout?)")
    missing = [s for s in self._local if str(s) not in state["streams"]]
    if missing:
      raise ValueError(f"data iterator state: streams {missing} of this process are missing")
    self.close()
    self._start(state)

  def stats(self) -> dict[str, int]:
    """Counters after the last batch returned: documents, tokens, filtered, empty_files, bad_<kind>, bad_records."""
    return dict(self._stats)

  def _start(self, state: dict) -> None:
    self._executor = concurrent.futures.ThreadPoolExecutor(self._cfg.num_threads, thread_name_prefix="ssa_data")
    self._streams = [self._new_stream(s, self._executor, state["streams"].get(str(s)), self._repeat)
                     for s in self._local]
    self._state = {**self._layout(), "step": state["step"],
                   "streams": {str(s.stream_id): s.state() for s in self._streams}}
    self._stats = self._sum_stats()
    self._queue: queue.Queue = queue.Queue(self._cfg.prefetch)
    self._stop_event = threading.Event()
    self._thread = threading.Thread(target=self._produce, args=(state["step"],), daemon=True,
                                    name="ssa_data_producer")
    self._thread.start()

  def _sum_stats(self) -> dict[str, int]:
    total = collections.Counter()
    for s in self._streams:
      total.update(s.stats())
    return dict(total)

  def _produce(self, step: int) -> None:
    try:
      while not self._stop_event.is_set():
        if self.num_batches is not None and step >= self.num_batches:
          put_until_stopped(self._queue, (_END, self._sum_stats()), self._stop_event)
          return
        rows = []
        for stream in self._streams:
          for _ in range(self._rows_per_stream):
            window = stream.next_window()
            if window is None:
              # The stats include what was read past the last whole batch (e.g. a final bad record).
              put_until_stopped(self._queue, (_END, self._sum_stats()), self._stop_event)
              return
            rows.append(window)
        step += 1
        state = {**self._layout(), "step": step, "streams": {str(s.stream_id): s.state() for s in self._streams}}
        batch = (np.asarray(rows, dtype=np.int32), state, self._sum_stats())
        if not put_until_stopped(self._queue, batch, self._stop_event):
          return
    except BaseException as e:  # pylint: disable=broad-except
      put_until_stopped(self._queue, e, self._stop_event)  # Re-raised in the consumer's thread.

  def close(self) -> None:
    """Stop the background threads."""
    if self._thread is not None:
      self._stop_event.set()
      self._thread.join()
      self._executor.shutdown(wait=True, cancel_futures=True)
      self._thread = None

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._thread is None and self._queue.empty():
      raise StopIteration
    item = self._queue.get()
    if isinstance(item, tuple) and item[0] is _END:
      self._queue.put(item)  # Stay exhausted.
      self._stats = item[1]
      raise StopIteration
    if isinstance(item, BaseException):
      self._queue.put(item)
      raise item
    tokens, self._state, self._stats = item
    return {"tokens": tokens}


def make_lm_iterator(data_cfg: ml_collections.ConfigDict, *, split: str, seq_len: int, global_batch_size: int,
                     process_index: int, process_count: int, tokenizer: Tokenizer | None = None,
                     repeat: bool = True, max_batches: int | None = None):
  """The batch iterator of `split` for this process (layout: the module docstring; 'array_record': array_record.py).

  `max_batches` ends it after that many batches (pass `eval_batches` for validation: it also bounds the counting
  that makes every process stop at the same batch).
  """
  validate_data_config(data_cfg)
  if not 0 <= process_index < process_count:
    raise ConfigError(f"process_index: {process_index} not in [0, {process_count})")
  if global_batch_size % process_count:
    raise ConfigError(f"global_batch_size: {global_batch_size} is not divisible by the process count {process_count}")
  if seq_len < 1:
    raise ConfigError(f"seq_len: expected >= 1, got {seq_len}")
  if max_batches is not None and max_batches < 1:
    raise ConfigError(f"max_batches: expected >= 1 or None, got {max_batches}")
  if data_cfg.format == "array_record":
    return ArrayRecordIterator(data_cfg, split=split, seq_len=seq_len, global_batch_size=global_batch_size,
                               process_index=process_index, process_count=process_count, repeat=repeat,
                               max_batches=max_batches)
  path = data_cfg.path or demo.ensure_demo_corpus(data_cfg.cache_dir)
  if tokenizer is None:
    tokenizer = load_tokenizer(resolve_paths(data_cfg)[1])
  files = list_files(path, split, data_cfg.format)
  if repeat:  # a training stream must find a document somewhere; fail now, not at the first step
    check_documents(files, data_cfg.format, dict(data_cfg.mixture), list(data_cfg.exclude))
  return LMIterator(data_cfg, files=files, split=split, seq_len=seq_len, global_batch_size=global_batch_size,
                    process_index=process_index, process_count=process_count, tokenizer=tokenizer,
                    repeat=repeat, max_batches=max_batches)


def sum_over_processes(stats: dict[str, int], allgather: Callable | None = None) -> dict[str, int]:
  """Data counters (`iterator.stats()`) summed over all processes; a collective: call it on every process.

  `allgather`: int32 array -> the stacked [process_count, ...] arrays of all processes (default process_allgather).
  """
  if allgather is None:
    if jax.process_count() == 1:
      return dict(stats)
    allgather = multihost_utils.process_allgather
  keys = sorted(stats)
  values = np.asarray([stats[k] for k in keys], np.int64)
  # Token counts pass 2^31; jax runs 32-bit by default, so each count travels as two 31-bit halves.
  halves = np.stack([values >> 31, values & (2**31 - 1)]).astype(np.int32)
  gathered = np.asarray(allgather(halves)).astype(np.int64)  # [processes, 2, keys]
  totals = ((gathered[:, 0] << 31) + gathered[:, 1]).sum(axis=0)
  return {k: int(v) for k, v in zip(keys, totals)}
