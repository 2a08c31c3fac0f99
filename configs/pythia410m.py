"""pythia410m: vanilla attention."""

from configs import base


def get_config():
  return base.get_config("pythia410m", "vanilla")
