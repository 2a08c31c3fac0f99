"""Two real training processes on this machine (loopback coordinator, one CPU device each, gloo collectives):
SIGTERM to one of them makes both save the same step and exit 0; the resumed run's losses, held-out and
validation losses equal those of one process training on the same global batches."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ssa_jax.formats import checkpoint
from ssa_jax.train.loop import train
from train_configs import tiny_run_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  from ssa_jax.data import demo

  cache = tmp_path_factory.mktemp("cache")
  return demo.ensure_demo_corpus(str(cache)), demo.ensure_demo_tokenizer(str(cache), 512)


def _config(corpus, **train_fields):
  # A constant rate after warmup: the schedule does not depend on train.steps, which differs between runs.
  config = tiny_run_config(corpus[0], corpus[1], checkpoint_every=3, log_every=1, schedule="constant",
                           warmup_steps=2, **train_fields)
  config.model.vocab_size = 512
  return config


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _args(config, workdir, process_id: int, port: int) -> list[str]:
  c = config
  over = {
      "model.vocab_size": c.model.vocab_size, "model.d_model": c.model.d_model, "model.num_layers": c.model.num_layers,
      "model.num_heads": c.model.num_heads, "model.mlp_dim": c.model.mlp_dim, "model.max_seq_len": c.model.max_seq_len,
      "data.path": c.data.path, "data.tokenizer_path": c.data.tokenizer_path,
      **{f"train.{k}": v for k, v in c.train.items()}, "eval.at_end": c.eval.at_end, "eval.passkey": False,
      "distributed.mode": "on", "distributed.coordinator_address": f"127.0.0.1:{port}",
      "distributed.num_processes": 2, "distributed.process_id": process_id,
  }
  return [sys.executable, str(REPO / "train.py"), f"--config={REPO}/configs/tiny_ssa.py", f"--workdir={workdir}",
          *[f"--config.{k}={v}" for k, v in over.items()]]


def _start_two(config, workdir) -> list[subprocess.Popen]:
  port = _free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  return [subprocess.Popen(_args(config, workdir, i, port), cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for i in range(2)]


def _finish(procs, timeout: float = 180) -> list[tuple[int, str, str]]:
  """(returncode, stdout, stderr) of each process; a process still running after `timeout` is a deadlock."""
  deadline, results = time.time() + timeout, []
  try:
    for p in procs:
      out, err = p.communicate(timeout=max(deadline - time.time(), 1))
      results.append((p.returncode, out, err))
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    errs = [p.communicate()[1][-2000:] for p in procs]
    pytest.fail(f"deadlock: the processes did not exit within {timeout} s; stderr: {errs}")
  return results


def _summary(stdout: str) -> dict:
  return json.loads(stdout[stdout.index("{\n"):])


def _records(workdir) -> dict[int, dict]:
  lines = [json.loads(l) for l in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r for r in lines if "loss" in r}


def test_sigterm_to_one_process_saves_the_same_step_everywhere_and_resumes(corpus, tmp_path):
  workdir = tmp_path / "two"
  procs = _start_two(_config(corpus, steps=100_000), workdir)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 180
  while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 4):
    if any(p.poll() is not None for p in procs):
      pytest.fail(f"a process ended before the signal: {[p.communicate()[1][-2000:] for p in procs]}")
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)  # not the coordinator, not the process writing the metrics
  results = _finish(procs)
  for code, _, err in results:
    assert code == 0, err[-3000:]
  summaries = [_summary(out) for _, out, _ in results]
  stop = summaries[0]["step"]
  assert [s["step"] for s in summaries] == [stop, stop] and stop >= 4, summaries
  assert all(s["stopped"] == "SIGTERM" for s in summaries), summaries
  assert checkpoint.resolve_step_dir(workdir / "checkpoints")[1] == stop
  assert "process 1: SIGTERM" in results[1][2]

  end = stop + 3
  resume = _config(corpus, steps=end)
  resume.eval.at_end = True  # the held-out perplexity into results.json (no tasks, no passkey)
  resumed = _finish(_start_two(resume, workdir))
  for code, _, err in resumed:
    assert code == 0, err[-3000:]
  assert f"resumed from {workdir}/checkpoints/{stop}" in resumed[0][2]
  assert all(_summary(out)["step"] == end for _, out, _ in resumed)
  # Process 0 alone writes results.json; both evaluate (the held-out batches are split between them).
  assert [("results ->" in out) for _, out, _ in resumed] == [True, False]
  results = json.loads((workdir / "results.json").read_text())
  assert results["ssa_jax"]["step"] == end

  # One process, one device, the same global batches, the same end-of-run evaluation.
  one = _config(corpus, steps=end)
  one.mesh.num_devices = 1
  one.eval.at_end = True
  train(one, str(tmp_path / "one"))
  one_results = json.loads((tmp_path / "one" / "results.json").read_text())
  # The held-out split read whole and the validation batches, split between two processes: the windows and
  # the losses of one process reading them all (measured: equal to 1e-7 relative, the order of float32 sums).
  heldout, one_heldout = results["ssa_jax"]["heldout"], one_results["ssa_jax"]["heldout"]
  assert heldout["windows"] == one_heldout["windows"] > 0 and heldout["tokens"] == one_heldout["tokens"]
  assert heldout["loss"] == pytest.approx(one_heldout["loss"], rel=1e-5, abs=0), (heldout, one_heldout)
  assert results["results"]["heldout"]["perplexity,none"] == pytest.approx(
      one_results["results"]["heldout"]["perplexity,none"], rel=1e-5, abs=0)
  assert results["ssa_jax"]["validation"]["val_loss"] == pytest.approx(
      one_results["ssa_jax"]["validation"]["val_loss"], rel=1e-5, abs=0)
  two, single = _records(workdir), _records(tmp_path / "one")
  assert sorted(two) == sorted(single) == list(range(1, end + 1))
  np.testing.assert_allclose([two[s]["loss"] for s in two], [single[s]["loss"] for s in two], rtol=1e-5)
  # The data counters are summed over the processes: those of the one process reading everything.
  counters = [k for k in single[1] if k.startswith("data/")]
  assert "data/tokens" in counters
  assert [[two[s][k] for k in counters] for s in two] == [[single[s][k] for k in counters] for s in two]
