"""`python -m ssa_jax.experiments.compare`: the comparison command (see cli.py)."""

from ssa_jax.errors import ConfigError
from ssa_jax.experiments.compare import cli
from ssa_jax.runtime import cli_errors
from ssa_jax.train.workdir_lock import WorkdirLockedError

if __name__ == "__main__":
  cli.define_flags()
  cli_errors.run(cli.main, user_errors=(ConfigError, WorkdirLockedError))
