"""gpt2: vanilla attention."""

from configs import base


def get_config():
  return base.get_config("gpt2", "vanilla")
