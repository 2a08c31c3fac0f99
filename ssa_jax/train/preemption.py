"""Stop requests (SIGTERM, Ctrl-C) that every process of a run obeys at the same step.

A signal reaches one process (a preempted host, a user's Ctrl-C) or several at different moments; every
process must still save the same step and exit, or the checkpoint's collectives deadlock. The protocol is jax's
preemption sync manager's, in Python over the same coordination service: jax's handles SIGTERM only, and its
C++ handler swallows every later SIGTERM, so `timeout` or a second signal could never end the process.

  1. The process that gets the first signal writes a request key in the coordination service's key-value store.
  2. In every process a watcher thread long-polls that key. On seeing it, it publishes the last step its
     training loop has finished, S_p, reads every other process's S_q, and sets the stop step to
     max_q S_q + 1. Meanwhile the loop may not finish another step (`check` waits): the exchange involves
     only the watcher threads, never the devices, so that wait cannot deadlock, and every process is at or
     before the stop step when it learns it.
  3. Each loop stops after that step, saves it, and exits.

Per step the loop only reads a lock-protected field: no collective, no remote call. A second signal ends the
process at once (the default action), and so does `config.train.preemption_deadline_s` after the first, so
that a process whose peers are gone does not wait forever for an agreement or a collective.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
from typing import Any, Callable

import jax
from jax._src import distributed  # the coordination service's client (jax.distributed keeps it there)

_POLL_MS = 200  # how long one long-poll of the key-value store lasts: the watcher's shutdown latency
_runs = itertools.count()  # one key namespace per run: a process may train several runs in turn (compare.py)
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # the signals StopSignals handles


class StopAgreement:
  """Agrees on the step after which every process stops, once any process requests a stop. `client`:
  jax.distributed's key-value client (None with one process: a request stops at once); `namespace`: the prefix
  of this run's keys, the same on every process."""

  def __init__(self, client: Any | None, process_index: int, process_count: int, namespace: str):
    self._client, self._index, self._count = client, process_index, process_count
    self._prefix = namespace.rstrip("/") + "/"
    self._cond = threading.Condition()
    self._step = -1  # the last step the loop has finished (passed to `check`)
    self._exchanging = False
    self._stop_step: int | None = None
    self._name: str | None = None  # the agreed request's name ('SIGTERM' / 'SIGINT')
    self._error: BaseException | None = None
    self._closing = threading.Event()
    self._local: str | None = None
    self._watcher = None
    if client is not None and process_count > 1:
      self._watcher = threading.Thread(target=self._watch, daemon=True, name="ssa_stop_watcher")
      self._watcher.start()

  # -- the process's own request ------------------------------------------------------------------
  def request(self, name: str) -> None:
    """Asks every process to stop (called from a signal handler: no lock taken, one remote call)."""
    self._local = self._local or name
    if self._watcher is None:
      return
    try:
      self._client.key_value_set(self._prefix + "request", name)
    except Exception as e:  # pylint: disable=broad-except
      if "ALREADY_EXISTS" not in str(e):  # another process asked first: its request stands
        os.write(2, f"stop request: could not reach the coordination service ({e})\n".encode())

  # -- the loop's side ------------------------------------------------------------------------------
  def check(self, step: int) -> str | None:
    """After finishing `step`: the agreed request's name when every process stops at this step, else None."""
    if self._watcher is None:
      return self._local
    with self._cond:
      self._step = step
      while self._exchanging:
        self._cond.wait()
      if self._error is not None:
        raise RuntimeError(f"stop request: agreeing on the stop step failed: {self._error}") from self._error
      if self._stop_step is not None and step >= self._stop_step:
        return self._name
    return None

  def final(self) -> str | None:
    """After the loop, on every process: the name of any stop requested so far (the same on all), else None.
    A collective over the key-value store: every process must call it once, after its loop."""
    if self._watcher is None:
      return self._local
    mine = self._local or self._try_get(self._prefix + "request") or "-"
    self._client.key_value_set(f"{self._prefix}final/{self._index}", mine)
    names = [self._wait_for(f"{self._prefix}final/{q}", stop_when_closing=False) for q in range(self._count)]
    return next((n for n in names if n != "-"), None)

  def close(self) -> None:
    """Stops the watcher thread (within one poll)."""
    self._closing.set()
    if self._watcher is not None and self._watcher is not threading.current_thread():
      self._watcher.join()

  # -- the watcher thread ---------------------------------------------------------------------------
  def _try_get(self, key: str) -> str | None:
    try:
      return self._client.key_value_try_get(key)
    except Exception as e:  # pylint: disable=broad-except
      if "NOT_FOUND" in str(e):
        return None
      raise

  def _wait_for(self, key: str, stop_when_closing: bool = True) -> str | None:
    """The key's value once some process sets it; None when closing first (`stop_when_closing`)."""
    while not (stop_when_closing and self._closing.is_set()):
      try:
        return self._client.blocking_key_value_get(key, _POLL_MS)
      except Exception as e:  # pylint: disable=broad-except
        if "DEADLINE_EXCEEDED" not in str(e):  # the poll's timeout: poll again
          raise
    return None

  def _watch(self) -> None:
    try:
      name = self._wait_for(self._prefix + "request")
      if name is None:
        return
      with self._cond:
        self._exchanging = True  # the loop finishes no further step until the stop step is known
        mine = self._step
      self._client.key_value_set(f"{self._prefix}step/{self._index}", str(mine))
      steps = [self._wait_for(f"{self._prefix}step/{q}") for q in range(self._count)]
      with self._cond:
        if None not in steps:
          self._stop_step, self._name = max(int(s) for s in steps) + 1, name
    except BaseException as e:  # pylint: disable=broad-except
      with self._cond:
        self._error = e
    finally:
      with self._cond:
        self._exchanging = False
        self._cond.notify_all()


class StopSignals:
  """SIGTERM and Ctrl-C (SIGINT) handlers: the first signal calls `on_first(name)`; a second one, or the
  deadline (`deadline_s` after the first, 0 = none), ends the process by the signal's default action."""

  def __init__(self, on_first: Callable[[str], None], deadline_s: float, process_index: int = 0,
               process_count: int = 1):
    self.name: str | None = None
    self.signum: int | None = None
    self._on_first, self._deadline_s = on_first, float(deadline_s)
    self._who = f"process {process_index}: " if process_count > 1 else ""
    self._when = "at a step all processes agree on" if process_count > 1 else "after the step under way"
    self._timer: threading.Timer | None = None
    main = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread only
    self._previous: dict[int, Any] = {s: signal.signal(s, self._handle) for s in HANDLED_SIGNALS} if main else {}

  def _handle(self, signum, frame):
    del frame
    self.name, self.signum = signal.Signals(signum).name, signum
    for s in HANDLED_SIGNALS:
      signal.signal(s, signal.SIG_DFL)  # the next SIGTERM or Ctrl-C ends the process wherever it is
    deadline = f"; exits anyway after {self._deadline_s:g} s" if self._deadline_s > 0 else ""
    what = "Ctrl-C" if signum == signal.SIGINT else self.name
    # os.write, not print: a handler must not re-enter a buffered stream the interrupted code is writing.
    os.write(2, f"\n{self._who}{what}: saving a checkpoint {self._when}, then exiting "
                f"(Ctrl-C or SIGTERM again exits at once, losing the steps since the last checkpoint{deadline})\n"
             .encode())
    if self._deadline_s > 0:
      self._timer = threading.Timer(self._deadline_s, self._expire)
      self._timer.daemon = True
      self._timer.start()
    self._on_first(self.name)

  def _expire(self) -> None:
    os.write(2, f"{self._who}no checkpoint within {self._deadline_s:g} s of {self.name} "
                f"(config.train.preemption_deadline_s): exiting without it\n".encode())
    os.kill(os.getpid(), self.signum)  # the handler set the default action

  def restore(self, redeliver: bool = False) -> None:
    """Puts the previous handlers back and cancels the deadline. `redeliver`: a signal received so far is sent
    again to the restored handler (one that came after the processes agreed there was none is not swallowed)."""
    if self._timer is not None:
      self._timer.cancel()
    for s, previous in self._previous.items():
      # None: a handler not installed from Python (e.g. jax's preemption notifier); the default replaces it.
      signal.signal(s, signal.SIG_DFL if previous is None else previous)
    self._previous = {}
    if redeliver and self.signum is not None:
      os.kill(os.getpid(), self.signum)


class StopRequests(StopAgreement):
  """The loop's view: the agreement, requested by the signal handlers. `check(step)` after each step, `finish()`
  after the loop (on every process), `close()` at the end (restores the handlers)."""

  def __init__(self, deadline_s: float):
    index, count = jax.process_index(), jax.process_count()
    client = distributed.global_state.client if count > 1 else None
    if count > 1 and client is None:
      raise RuntimeError("a multi-process run without jax.distributed's client: the processes cannot agree on a "
                         "stop step (start them through config.distributed)")
    super().__init__(client, index, count, namespace=f"ssa_jax/stop/{next(_runs)}")
    self.signals = StopSignals(self.request, deadline_s, index, count)

  def finish(self) -> str | None:
    """After the loop, on every process: any stop request so far (the same on all); handlers restored."""
    agreed = self.final()
    self.close(redeliver=agreed is None)
    return agreed

  def close(self, redeliver: bool = False) -> None:
    """Stops the watcher and restores the signal handlers (idempotent: `finish` closes, so does the loop's exit)."""
    super().close()
    self.signals.restore(redeliver)
