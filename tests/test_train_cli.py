"""train.py as a new user meets it: one-line errors (exit 2), one run per workdir, the CPU-jax warning."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssa_jax.runtime.accelerator_check import cpu_jax_on_gpu_machine_warning
from ssa_jax.train.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLockedError, workdir_lock

REPO = Path(__file__).resolve().parents[1]


def _train(*args, timeout=120):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device: these runs stop before compiling
  return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _error_lines(proc) -> list[str]:
  return [l for l in proc.stderr.splitlines() if l.strip()]


@pytest.mark.parametrize("args,expected", [
    (["--config=configs/tiny_ssa.py", "--config.train.lrr=1e-3"],
     ['--config.train.lrr', "no field 'lrr'", 'Did you mean "lr"']),
    (["--config=configs/tiny_sssa.py"], ["configs/tiny_sssa.py does not exist", "configs/tiny_ssa.py"]),
    (["--config=configs/tiny_ssa.py", "--config.train.steps=many"], ["--config.train.steps=many"]),
    (["--config=configs/pythia160m_ssa_ft.py"], ["config.init.hf_dir: required by a fine-tune config"]),
    (["--config=configs/tiny_ssa.py", "--config.model.ssa.token_kind=frequency"],
     ["config.model.ssa.feature_path"]),
])
def test_user_mistakes_are_one_line_and_exit_2(args, expected):
  proc = _train(*args)
  lines = _error_lines(proc)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(lines) <= 2 and lines[0].startswith("error: "), proc.stderr[-2000:]
  for text in expected:
    assert text in proc.stderr, proc.stderr


@pytest.mark.parametrize("args,expected", [
    ([], ["--config is required", "--config=configs/tiny_ssa.py (the offline demo)"]),
    # A named corpus without its tokenizer: the demo's BPE is never used for it, in a run or a dry run.
    (["--config=configs/pythia160m_ssa.py", "--config.data.path=configs"],
     ["config.data.tokenizer_path: required outside demo mode"]),
    (["--config=configs/pythia160m_ssa.py", "--config.data.path=configs", "--dry_run"],
     ["config.data.tokenizer_path: required outside demo mode"]),
    (["--config=configs/tiny_ssa.py", "--target=v5p-8"], ["--target=v5p-8: needs --dry_run"]),
])
def test_start_up_mistakes_are_exactly_one_line(tmp_path, args, expected):
  workdir = tmp_path / "run"
  proc = _train(*args, *([f"--workdir={workdir}"] if args else []))
  lines = _error_lines(proc)
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
  for text in expected:
    assert text in lines[0], lines[0]
  assert not workdir.exists()


def test_verbosity_1_shows_the_traceback():
  proc = _train("--config=configs/tiny_ssa.py", "--config.train.lrr=1e-3", "--verbosity=1")
  assert proc.returncode != 0 and "Traceback (most recent call last)" in proc.stderr
  assert 'Did you mean "lr"' in proc.stderr


def test_a_locked_workdir_is_refused_at_once_naming_the_holder(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  # This test process holds the lock, as a first run would.
  holder = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": None, "started": "2025-01-01T00:00:00"}
  (workdir / LOCK_NAME).write_text(json.dumps(holder))
  t0 = time.time()
  proc = _train("--config=configs/tiny_ssa.py", f"--workdir={workdir}",
                f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.data.demo_vocab_size=300")
  elapsed = time.time() - t0
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert f"pid {os.getpid()}" in proc.stderr and socket.gethostname() in proc.stderr, proc.stderr
  assert len(_error_lines(proc)) <= 2, proc.stderr
  assert sorted(p.name for p in workdir.iterdir()) == [LOCK_NAME]  # nothing written by the refused run
  assert json.loads((workdir / LOCK_NAME).read_text())["pid"] == os.getpid()
  assert not (tmp_path / "cache").exists()  # refused before the data (the demo corpus was not even built)
  assert elapsed < 30, elapsed


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_lock_is_taken_released_and_a_stale_one_taken_over(tmp_path):
  with workdir_lock(tmp_path):
    held = json.loads((tmp_path / LOCK_NAME).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
      WorkdirLock(tmp_path).acquire()
  assert not (tmp_path / LOCK_NAME).exists()

  # Same host, process gone: taken over.
  (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid()}))
  lock = WorkdirLock(tmp_path)
  lock.acquire()
  assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
  lock.release()

  # Same host, pid alive but now another process (started at another time): taken over.
  (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "pid_start": -5}))
  lock = WorkdirLock(tmp_path)
  lock.acquire()
  lock.release()

  # Another host: its process cannot be checked from here, so the lock stands.
  (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "elsewhere-xyz", "pid": 1}))
  with pytest.raises(WorkdirLockedError, match=f"host elsewhere-xyz.*delete {tmp_path / LOCK_NAME}"):
    WorkdirLock(tmp_path).acquire()


def test_cpu_jax_on_a_gpu_machine_warns(monkeypatch):
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  message = cpu_jax_on_gpu_machine_warning(backend="cpu", gpu="/dev/nvidia0")
  assert "/dev/nvidia0" in message and "pip install -e '.[cuda]'" in message
  assert cpu_jax_on_gpu_machine_warning(backend="gpu", gpu="/dev/nvidia0") is None
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # asked for the CPU on purpose
  assert cpu_jax_on_gpu_machine_warning(backend="cpu", gpu="/dev/nvidia0") is None
