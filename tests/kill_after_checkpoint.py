"""Test driver: runs train.py's main, but SIGKILLs its own process right after checkpoint KILL_AT_STEP is on disk.

The kill is deterministic (no racing a timer) and as abrupt as a real one: no handler, no cleanup, no flush.
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssa_jax import checkpoint  # noqa: E402

kill_at = int(os.environ["KILL_AT_STEP"])
_save = checkpoint.save_train_state


def save_then_maybe_die(mngr, state, *args, **kwargs):
  saved = _save(mngr, state, *args, **kwargs)
  if int(state.step) == kill_at:
    mngr.wait_until_finished()
    os.kill(os.getpid(), signal.SIGKILL)
  return saved


checkpoint.save_train_state = save_then_maybe_die

if __name__ == "__main__":
  import runpy

  sys.argv[0] = str(Path(__file__).resolve().parents[1] / "train.py")
  runpy.run_path(sys.argv[0], run_name="__main__")
