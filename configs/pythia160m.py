"""pythia160m: vanilla attention."""

from configs import base


def get_config():
  return base.get_config("pythia160m", "vanilla")
