"""The console's progress line (ssa_jax/train/metrics.py ConsoleProgress): the ETA of a resumed session."""

import pytest

from ssa_jax.train.metrics import ConsoleProgress


class Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_the_eta_after_a_resume_counts_this_sessions_steps_after_its_compile(capsys):
  """Resumed at step 1000 of 1100: the first step (compile included) ends at 60 s, then 9 steps of 1 s each.
  At 1 s a step the 90 steps left take 90 s (the compile, spread over the 10 steps, would make it 621 s)."""
  clock = Clock()
  progress = ConsoleProgress(1100, 1000, clock=clock)
  assert progress.eta_s(1001) is None
  clock.now = 60.0
  progress.first_step_done()
  clock.now = 61.0
  progress.first_step_done()  # only the first call marks
  clock.now = 69.0
  assert progress.eta_s(1010) == pytest.approx(90.0)
  progress.line(1010, {"loss": 2.0, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 1000.0})
  assert capsys.readouterr().out.rstrip().endswith("eta 1.5m")


def test_the_eta_is_unknown_before_a_step_after_the_first(capsys):
  progress = ConsoleProgress(10, 0, clock=Clock())
  progress.line(1, {"loss": 2.0, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 1000.0, "mfu": None})
  assert capsys.readouterr().out.rstrip().endswith("eta --")
