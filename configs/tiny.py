"""The embedded demo: a tiny Pythia-shaped model, vanilla attention, trained on the offline demo corpus, then evaluated."""

from configs import base


def get_config():
  return base.get_config("tiny", "vanilla", mode="demo")
