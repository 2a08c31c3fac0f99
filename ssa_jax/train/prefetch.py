"""Batches put on the devices ahead of the step, in a background thread: while the devices run step k, the
thread takes batch k+1 from the host iterator and transfers it, so the loop's host time per step is a queue get.
The host iterator runs ahead, so each batch carries its state and counters: the loop checkpoints and logs what
belongs to the batches it has actually trained on.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, Callable

from ssa_jax.data.pipeline import put_until_stopped

_END = object()


@dataclasses.dataclass
class Prefetched:
  """A batch on the devices, with the host iterator's state and counters right after it."""

  batch: dict[str, Any]
  data_state: dict
  data_stats: dict[str, int]


class DevicePrefetcher:
  """`next(p)` -> Prefetched, `depth` batches transferred ahead of the consumer. `close()` stops the thread
  (the host iterator is closed by its owner)."""

  def __init__(self, it, to_device: Callable[[dict], dict], depth: int = 2):
    self._it, self._to_device = it, to_device
    self._queue: queue.Queue = queue.Queue(depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, daemon=True, name="ssa_device_prefetch")
    self._thread.start()

  def _produce(self) -> None:
    try:
      while not self._stop.is_set():
        host = next(self._it, _END)
        item = host if host is _END else Prefetched(self._to_device(host), self._it.get_state(), self._it.stats())
        if not put_until_stopped(self._queue, item, self._stop) or item is _END:
          return
    except BaseException as e:  # pylint: disable=broad-except
      put_until_stopped(self._queue, e, self._stop)  # re-raised in the consumer's thread

  def __next__(self) -> Prefetched:
    item = self._queue.get()
    if item is _END or isinstance(item, BaseException):
      self._queue.put(item)  # stay exhausted / failed
      raise StopIteration if item is _END else item
    return item

  def close(self, timeout_s: float = 10.0) -> None:
    """Stops the thread. It may be waiting on the host iterator (a stalled read): after `timeout_s` it is
    left behind (a daemon thread, blocked until the iterator is closed or the process exits)."""
    self._stop.set()
    self._thread.join(timeout_s)
