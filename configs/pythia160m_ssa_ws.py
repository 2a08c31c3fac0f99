"""pythia160m: SSA weight sharing (Q+V, token + position; < 0.5% new parameters)."""

from configs import base


def get_config():
  return base.get_config("pythia160m", "ssa_ws")
