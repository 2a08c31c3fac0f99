"""Small real-text study, vanilla: the tiny model on the demo corpus with the same budget as its two siblings."""

from configs import base


def get_config():
  return base.study_config("vanilla")
