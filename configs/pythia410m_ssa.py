"""pythia410m: SSA base (Q+V, token + position temperatures)."""

from configs import base


def get_config():
  return base.get_config("pythia410m", "ssa")
