"""pythia160m: SSA base (Q+V, token + position temperatures)."""

from configs import base


def get_config():
  return base.get_config("pythia160m", "ssa")
