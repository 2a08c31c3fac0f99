"""One training run per workdir: WORKDIR/train.lock names the holder (host, pid); process 0 takes it.

A second run on a locked workdir stops at once, naming the holder. A lock left by a process that died without
cleaning up (SIGKILL, a second Ctrl-C, a machine crash) is detected on the same host (the pid is gone, or now
belongs to a process started later) and taken over; one from another host cannot be checked from here: the
message says which file to delete. Local workdirs are locked atomically (O_EXCL); on object stores (gs://)
creation is check-then-write, which still catches a second run started after the first one began.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from typing import Iterator

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

LOCK_NAME = "train.lock"


class WorkdirLockedError(RuntimeError):
  """Another run holds the workdir; the message names it."""


def _process_start_ticks(pid: int) -> int | None:
  """The process's start time in clock ticks since boot (Linux /proc), which tells a reused pid apart."""
  try:
    stat = epath.Path(f"/proc/{pid}/stat").read_text()
  except OSError:
    return None
  # Field 22 (starttime); split after the command name, which is in parentheses and may hold spaces.
  return int(stat[stat.rindex(")") + 2:].split()[19])


def _holder_is_gone(holder: dict) -> bool:
  """True when the lock's process certainly no longer runs (same host only)."""
  if holder.get("host") != socket.gethostname():
    return False
  pid = holder.get("pid")
  if not isinstance(pid, int):
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    pass  # alive, owned by someone else
  started = holder.get("pid_start")
  return started is not None and _process_start_ticks(pid) not in (None, started)


def _describe(holder: dict) -> str:
  return f"host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('started')}"


def _is_local(path: epath.Path) -> bool:
  return "://" not in str(path)


class WorkdirLock:
  """The lock file of one workdir; `acquire` raises WorkdirLockedError when another live run holds it."""

  def __init__(self, workdir: epath.PathLike):
    self.path = epath.Path(workdir) / LOCK_NAME
    self.held = False
    self._made_workdir = False  # acquire created the workdir: release removes it again if it is still empty
    pid = os.getpid()
    self.record = {"host": socket.gethostname(), "pid": pid, "pid_start": _process_start_ticks(pid),
                   "started": datetime.datetime.now().isoformat(timespec="seconds"),
                   "command": " ".join(sys.argv)}

  def _read(self) -> tuple[str, dict]:
    text = self.path.read_text()
    try:
      holder = json.loads(text)
    except json.JSONDecodeError:
      holder = {}  # a lock whose writer died mid-write; its host is unknown, so it is not taken over
    return text, holder if isinstance(holder, dict) else {}

  def _create(self) -> bool:
    """Writes the lock if no file is there; False when one is."""
    data = json.dumps(self.record) + "\n"
    if not _is_local(self.path):
      if self.path.exists():
        return False
      self.path.write_text(data)
      return True
    try:
      with open(self.path, "x", encoding="utf-8") as f:  # O_EXCL: of two runs creating it, one wins
        f.write(data)
    except FileExistsError:
      return False
    return True

  def _remove_stale(self, seen: str) -> None:
    """Removes the lock file if it still holds `seen` (so that of two runs taking over, one wins)."""
    if not _is_local(self.path):
      self.path.unlink(missing_ok=True)
      return
    aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return  # another run took it over first; _create decides
    if aside.read_text() == seen:
      aside.unlink()
    else:
      os.rename(aside, self.path)  # a fresh lock appeared in between: put it back

  def acquire(self) -> None:
    self._made_workdir = _is_local(self.path) and not self.path.parent.exists()
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
      if self._create():
        self.held = True
        return
      try:
        text, holder = self._read()
      except FileNotFoundError:
        continue  # released meanwhile
      if not _holder_is_gone(holder):
        raise WorkdirLockedError(
            f"workdir {self.path.parent} is in use by another training run ({_describe(holder)}); wait for it, "
            f"stop it, or pass another --workdir (if that run is gone, delete {self.path})")
      print(f"taking over the stale lock {self.path} ({_describe(holder)}: that process is gone)",
            file=sys.stderr, flush=True)
      self._remove_stale(text)
    raise WorkdirLockedError(f"{self.path}: could not take the lock (another run is starting in this workdir)")

  def release(self) -> None:
    """Deletes the lock file if it is still ours."""
    if not self.held:
      return
    self.held = False
    try:
      _, holder = self._read()
    except FileNotFoundError:
      return
    if holder.get("pid") == self.record["pid"] and holder.get("host") == self.record["host"]:
      self.path.unlink(missing_ok=True)
      if self._made_workdir and not any(self.path.parent.iterdir()):
        self.path.parent.rmdir()  # a run refused at start leaves no empty workdir behind


@contextlib.contextmanager
def workdir_lock(workdir: epath.PathLike) -> Iterator[None]:
  """Holds WORKDIR/train.lock for the block. Process 0 takes it; in multi-process runs every process
  learns the outcome, so that all of them stop when the workdir is taken."""
  lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
  error = None
  if lock is not None:
    try:
      lock.acquire()
    except WorkdirLockedError as e:
      error = str(e)
  if jax.process_count() > 1:
    ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not ok and error is None:
      error = f"workdir {workdir} is in use by another training run (process 0 says which)"
  if error:
    raise WorkdirLockedError(error)
  try:
    yield
  finally:
    if lock is not None:
      lock.release()
