"""The stop-request protocol (ssa_jax/train/preemption.py): processes simulated by threads over an in-memory
key-value store with the coordination service's semantics; the signal handlers in a child process."""

import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ssa_jax.train.preemption import StopAgreement

REPO = Path(__file__).resolve().parents[1]


class FakeKeyValueStore:
  """jax.distributed's client as the protocol uses it: set once, try_get, blocking get with a timeout."""

  def __init__(self):
    self._data, self._cond = {}, threading.Condition()

  def key_value_set(self, key, value):
    with self._cond:
      if key in self._data:
        raise RuntimeError(f"ALREADY_EXISTS: key {key} already exists")
      self._data[key] = value
      self._cond.notify_all()

  def key_value_try_get(self, key):
    with self._cond:
      if key not in self._data:
        raise RuntimeError(f"NOT_FOUND: Config key {key} not found")
      return self._data[key]

  def blocking_key_value_get(self, key, timeout_ms):
    with self._cond:
      if not self._cond.wait_for(lambda: key in self._data, timeout_ms / 1000):
        raise RuntimeError(f"DEADLINE_EXCEEDED: GetKeyValue() timed out with key: {key}")
      return self._data[key]


def _run_processes(n, steps, request_at, seed, lead=3):
  """Each simulated process trains up to `steps`, at its own speed but at most `lead` steps ahead of the
  slowest (the collectives of a real step couple the processes: a host blocked in `check` holds up the
  others' devices); `request_at[p]` = the step after which process p gets a signal. Returns each process's
  (stop step and name, or None; final agreement)."""
  store, rng = FakeKeyValueStore(), random.Random(seed)
  agreements = [StopAgreement(store, p, n, namespace="run") for p in range(n)]
  delays = [rng.uniform(0, 0.004) for _ in range(n)]
  out, done, coupled = [None] * n, [0] * n, threading.Condition()

  def loop(p):
    stopped = None
    for step in range(1, steps + 1):
      time.sleep(delays[p] * rng.random())
      with coupled:
        coupled.wait_for(lambda: min(done) >= step - lead)
        done[p] = step
        coupled.notify_all()
      if request_at.get(p) == step:
        agreements[p].request("SIGTERM" if p % 2 else "SIGINT")
      name = agreements[p].check(step)
      if name:
        stopped = (step, name)
        break
    with coupled:
      done[p] = steps  # out of the loop: it holds nobody up any more
      coupled.notify_all()
    out[p] = (stopped, agreements[p].final())
    agreements[p].close()

  threads = [threading.Thread(target=loop, args=(p,)) for p in range(n)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(30)
  assert not any(t.is_alive() for t in threads), "deadlock"
  return out


@pytest.mark.parametrize("seed", range(6))
def test_every_process_stops_after_the_same_step(seed):
  n = 2 + seed % 3
  requester = seed % n
  out = _run_processes(n, steps=400, request_at={requester: 20 + seed}, seed=seed)
  stops = {o[0] for o in out}
  assert len(stops) == 1, out  # the same step and the same name everywhere
  (step, name), = stops
  assert step > 20 + seed and name == ("SIGTERM" if requester % 2 else "SIGINT")
  assert {o[1] for o in out} == {name}


def test_two_requests_agree_on_the_first_and_no_request_stops_nobody():
  out = _run_processes(3, steps=300, request_at={1: 30, 2: 31}, seed=7)
  assert len({o[0] for o in out}) == 1 and out[0][0] is not None
  out = _run_processes(3, steps=40, request_at={}, seed=8)
  assert out == [(None, None)] * 3


def test_a_request_after_the_last_step_is_agreed_by_final():
  out = _run_processes(2, steps=50, request_at={1: 50}, seed=9)
  assert all(o[1] == "SIGTERM" for o in out), out  # stopped at 50 by check, or seen by final on both


def _child(code: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                        timeout=60)


def test_a_second_signal_or_the_deadline_ends_the_process():
  second = _child("""
      import os, signal, time
      from ssa_jax.train.preemption import StopSignals
      s = StopSignals(lambda name: print("first", name, flush=True), deadline_s=0)
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.5)
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(30)
  """)
  assert second.returncode == -signal.SIGTERM and second.stdout == "first SIGTERM\n", second.stderr

  start = time.time()
  deadline = _child("""
      import os, signal, time
      from ssa_jax.train.preemption import StopSignals
      s = StopSignals(lambda name: None, deadline_s=0.5)
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(30)  # an agreement or a collective that never completes
  """)
  assert deadline.returncode == -signal.SIGINT and time.time() - start < 20, deadline.stderr
  assert "no checkpoint within 0.5 s of SIGINT" in deadline.stderr


def test_restore_puts_back_a_signal_that_came_too_late_to_be_agreed():
  late = _child("""
      import os, signal, time
      from ssa_jax.train.preemption import StopSignals
      s = StopSignals(lambda name: None, deadline_s=0)
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.2)
      s.restore(redeliver=True)  # the processes agreed that no stop was requested
      time.sleep(30)
  """)
  assert late.returncode == -signal.SIGTERM, late.stderr
