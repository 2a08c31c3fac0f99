"""Test driver: runs train.py's main, but signals its own process right after checkpoint KILL_AT_STEP is on disk.

KILL_SIGNAL (default SIGKILL): the signal sent, KILL_TIMES (default 1) times in a row. The signal comes at a
known step (no racing a timer); SIGKILL is as abrupt as a real one: no handler, no cleanup, no flush. SIGINT
is what Ctrl-C sends; twice is a user pressing Ctrl-C again while the run saves.
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssa_jax.formats import checkpoint  # noqa: E402

kill_at = int(os.environ["KILL_AT_STEP"])
kill_signal = signal.Signals[os.environ.get("KILL_SIGNAL", "SIGKILL")]
kill_times = int(os.environ.get("KILL_TIMES", "1"))
_save = checkpoint.save_train_state


def save_then_maybe_signal(mngr, state, *args, **kwargs):
  saved = _save(mngr, state, *args, **kwargs)
  if int(state.step) == kill_at:
    mngr.wait_until_finished()
    for _ in range(kill_times):
      os.kill(os.getpid(), kill_signal)
  return saved


checkpoint.save_train_state = save_then_maybe_signal

if __name__ == "__main__":
  import runpy

  sys.argv[0] = str(Path(__file__).resolve().parents[1] / "train.py")
  runpy.run_path(sys.argv[0], run_name="__main__")
