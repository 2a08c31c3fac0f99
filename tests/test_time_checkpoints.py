"""Checkpoints by time (config.train.checkpoint_every_minutes): the first step that ends that many minutes after
the last save, beside checkpoint_every; process 0's decision one step later with several processes; and a run
resumed from a time-triggered checkpoint continues exactly as the uninterrupted run."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

from ssa_jax.formats import checkpoint
from ssa_jax.train import time_checkpoints
from ssa_jax.train.loop import train
from ssa_jax.train.time_checkpoints import CheckpointSchedule, DeviceBroadcast
from train_configs import tiny_run_config


class FakeClock:
  """A clock that moves `tick` seconds at each reading (the schedule reads it once a step)."""

  def __init__(self, tick: float):
    self.now, self.tick = 0.0, tick

  def __call__(self) -> float:
    self.now += self.tick
    return self.now


def _saved_steps(schedule: CheckpointSchedule, steps: int) -> list[int]:
  return [step for step in range(1, steps + 1) if schedule.due(step)]


def test_a_checkpoint_at_the_first_step_ending_the_minutes_after_the_last_save(monkeypatch):
  monkeypatch.setattr(time_checkpoints, "clock", FakeClock(60.0))  # a minute a step
  # 2.5 minutes: the first step ending 3 minutes after the start, then 3 minutes after each save.
  assert _saved_steps(CheckpointSchedule(0, 2.5, process_count=1), 10) == [3, 6, 9]


def test_a_save_by_steps_restarts_the_minutes(monkeypatch):
  monkeypatch.setattr(time_checkpoints, "clock", FakeClock(60.0))
  # Steps 4 and 8 by checkpoint_every; step 7 by time, 3 minutes after step 4's save.
  assert _saved_steps(CheckpointSchedule(4, 2.5, process_count=1), 9) == [3, 4, 7, 8]
  assert _saved_steps(CheckpointSchedule(4, 0.0, process_count=1), 9) == [4, 8]  # off: steps only


def test_several_processes_follow_process_0s_clock_one_step_later(monkeypatch):
  """The broadcast path, on this one process's devices: the decision sent after step k is read after step k+1."""
  monkeypatch.setattr(time_checkpoints, "clock", FakeClock(60.0))
  assert _saved_steps(CheckpointSchedule(0, 2.5, process_count=2), 10) == [4, 8]
  monkeypatch.setattr(time_checkpoints, "clock", FakeClock(60.0))
  assert _saved_steps(CheckpointSchedule(4, 2.5, process_count=2), 9) == [4, 8]  # a step save restarts it too


def test_the_device_broadcast_carries_process_0s_flag():
  broadcast = DeviceBroadcast()
  assert [broadcast.receive(broadcast.send(flag)) for flag in (True, False, True)] == [True, False, True]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  from ssa_jax.data import demo

  cache = tmp_path_factory.mktemp("cache")
  return demo.ensure_demo_corpus(str(cache)), demo.ensure_demo_tokenizer(str(cache), 512)


def _config(corpus):
  # One device (the quickest compile); a constant rate after warmup, as in the other exact-resume tests.
  config = tiny_run_config(corpus[0], corpus[1], steps=8, checkpoint_every=0, checkpoint_every_minutes=2.5,
                           keep_checkpoints=10, schedule="constant", eval_batches=0)
  config.model.vocab_size = 512
  config.mesh.num_devices = 1
  return config


def _losses(workdir: Path) -> dict[int, float]:
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in lines if "loss" in r}


def _params(workdir: Path) -> dict:
  _, variables, _ = checkpoint.load_model(workdir / "checkpoints")
  return traverse_util.flatten_dict(jax.device_get(variables["params"]))


def _checkpoints(workdir: Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_a_run_resumed_from_a_time_checkpoint_continues_exactly(corpus, tmp_path, monkeypatch):
  monkeypatch.setattr(time_checkpoints, "clock", FakeClock(60.0))
  workdir = tmp_path / "run"
  train(_config(corpus), str(workdir))
  assert _checkpoints(workdir) == [3, 6, 8]  # 3 and 6 by time, 8 at the end
  straight_losses, straight_params = _losses(workdir), _params(workdir)

  # The last steps lost (the end's checkpoint and summary removed, as a crash before them would): the run
  # resumes from the time-triggered checkpoint 6 and trains steps 7 and 8 again.
  shutil.rmtree(workdir / "checkpoints" / "8")
  (workdir / "summary.json").unlink()
  monkeypatch.setattr(time_checkpoints, "clock", FakeClock(60.0))
  assert train(_config(corpus), str(workdir))["step"] == 8
  assert _checkpoints(workdir) == [3, 6, 8]

  assert _losses(workdir) == straight_losses and sorted(straight_losses) == list(range(1, 9))
  params = _params(workdir)
  assert params.keys() == straight_params.keys()
  for k in params:
    np.testing.assert_array_equal(params[k], straight_params[k], err_msg="/".join(k))


def test_a_single_process_never_touches_the_devices_for_the_minutes(monkeypatch):
  """One process decides on its own clock: no broadcast, so no device value is read (no host sync a step)."""

  class NoBroadcast:
    def send(self, flag):
      raise AssertionError("a single process broadcast its decision")

  monkeypatch.setattr(time_checkpoints, "clock", FakeClock(60.0))
  assert _saved_steps(CheckpointSchedule(0, 2.5, process_count=1, broadcast=NoBroadcast()), 6) == [3, 6]


@pytest.mark.slow
def test_two_processes_save_the_same_time_steps_and_score_zero_shot_tasks(corpus, tmp_path):
  """Two real processes (tests/test_multiprocess_train.py's): both save the steps process 0's clock picks, the
  zero-shot passes and the end-of-run tasks run on each process's devices, and both exit 0 (about a minute)."""
  import test_multiprocess_train as two

  data_dir = tmp_path / "tasks"
  data_dir.mkdir()
  record = {"question": "Which is a color?", "choices": {"text": ["red", "dog"], "label": ["A", "B"]},
            "answerKey": "A"}
  (data_dir / "arc_easy_test.jsonl").write_text((json.dumps(record) + "\n") * 3)
  config = two._config(corpus, steps=6, checkpoint_every_minutes=1e-4, keep_checkpoints=20, zero_shot_every=3,
                       zero_shot_tasks="arc_easy", zero_shot_limit=0)
  config.train.checkpoint_every = 0
  config.eval.at_end = True
  workdir = tmp_path / "two"
  extra = [f"--config.eval.data_dir={data_dir}", "--config.eval.tasks=arc_easy"]
  args = lambda *a: two._args(*a) + extra  # noqa: E731
  port = two._free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  procs = [subprocess.Popen(args(config, workdir, i, port), cwd=two.REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  for code, _, err in two._finish(procs, timeout=400):
    assert code == 0, err[-3000:]
  # 1e-4 minutes: due at every step; the decision sent after a save says 'not yet', so every other step.
  assert _checkpoints(workdir) == [2, 4, 6]
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  zero_shot = {r["step"]: r for r in lines if "zero_shot/errors" in r}
  assert sorted(zero_shot) == [3, 6] and all(r["zero_shot/arc_easy/n"] == 3 for r in zero_shot.values())
  results = json.loads((workdir / "results.json").read_text())["results"]
  assert results["arc_easy"]["acc,none"] == zero_shot[6]["zero_shot/arc_easy/acc"]
