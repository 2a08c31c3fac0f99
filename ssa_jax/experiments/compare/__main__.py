"""`python -m ssa_jax.experiments.compare`: the comparison command (see cli.py)."""

from ssa_jax.experiments.compare import cli
from ssa_jax.runtime import cli_errors

if __name__ == "__main__":
  cli_errors.run(cli.main)
