"""llama2_7b: vanilla attention."""

from configs import base


def get_config():
  return base.get_config("llama2_7b", "vanilla")
