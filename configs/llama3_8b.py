"""llama3_8b: vanilla attention."""

from configs import base


def get_config():
  return base.get_config("llama3_8b", "vanilla")
