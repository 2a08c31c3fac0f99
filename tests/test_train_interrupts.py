"""A run stopped from outside resumes exactly: SIGKILL twice (losses and parameters equal a straight run's),
SIGTERM (the step under way checkpointed), Ctrl-C (once: the step finished, saved, exit 130; twice: at once)."""

import json
import signal
import subprocess
import sys
import time

import pytest

from ssa_jax.formats import checkpoint
from ssa_jax.train.loop import train
from train_runs import REPO, assert_same_run, demo_corpus, demo_run_config, run_cli_args, run_losses, run_python


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return demo_corpus(tmp_path_factory)


def test_resume_after_sigkill_twice_is_exact(corpus, tmp_path):
  config = demo_run_config(corpus, steps=20, checkpoint_every=5, async_checkpoints=True)
  straight = tmp_path / "straight"
  train(config, str(straight))

  resumed = tmp_path / "resumed"
  driver = str(REPO / "tests" / "kill_after_checkpoint.py")
  for kill_at in (10, 15):
    proc = run_python([driver, *run_cli_args(config, resumed)], {"KILL_AT_STEP": str(kill_at)}, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  proc = run_python([str(REPO / "train.py"), *run_cli_args(config, resumed)])
  assert "resumed from" in proc.stderr

  assert sorted(run_losses(straight)) == list(range(1, 21))
  assert_same_run(straight, resumed)


def test_sigterm_checkpoints_the_current_step(corpus, tmp_path):
  config = demo_run_config(corpus, steps=100_000, checkpoint_every=0, log_every=1)
  workdir = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *run_cli_args(config, workdir)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  summary = json.loads(out[out.index("{"):])
  assert summary["stopped"] == "SIGTERM" and summary["step"] >= 3
  root, step = checkpoint.resolve_step_dir(workdir / "checkpoints")
  assert step == summary["step"]


def test_ctrl_c_checkpoints_and_the_rerun_resumes_exactly(corpus, tmp_path):
  """Ctrl-C twice exits at once; once, it finishes the step, checkpoints it, exits 130; the re-run resumes."""
  config = demo_run_config(corpus, steps=14, checkpoint_every=4, async_checkpoints=True)
  straight = tmp_path / "straight"
  train(config, str(straight))

  interrupted = tmp_path / "interrupted"
  driver = str(REPO / "tests" / "kill_after_checkpoint.py")
  twice = {"KILL_AT_STEP": "4", "KILL_SIGNAL": "SIGINT", "KILL_TIMES": "2"}
  proc = run_python([driver, *run_cli_args(config, interrupted)], twice, check=False)
  assert proc.returncode == -signal.SIGINT, proc.stderr[-3000:]  # killed by the second Ctrl-C, no clean-up

  proc = run_python([driver, *run_cli_args(config, interrupted)], {"KILL_AT_STEP": "8", "KILL_SIGNAL": "SIGINT"}, check=False)
  assert proc.returncode == 130, proc.stderr[-3000:]
  assert "taking over the stale lock" in proc.stderr  # the killed run could not remove its lock
  assert f"resumed from {interrupted}/checkpoints/4" in proc.stderr
  assert "Ctrl-C: saving a checkpoint" in proc.stderr and "Traceback" not in proc.stderr
  summary = json.loads(proc.stdout[proc.stdout.index("{"):])
  assert summary["stopped"] == "SIGINT" and summary["step"] == 9, summary  # the step under way, then saved
  assert not (interrupted / "train.lock").exists()

  proc = run_python([str(REPO / "train.py"), *run_cli_args(config, interrupted)])
  assert f"resumed from {interrupted}/checkpoints/9" in proc.stderr
  assert_same_run(straight, interrupted)
