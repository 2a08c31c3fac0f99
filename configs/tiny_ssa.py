"""The embedded demo: a tiny Pythia-shaped model, SSA base (Q+V, token + position temperatures), trained on the offline demo corpus, then evaluated."""

from configs import base


def get_config():
  return base.get_config("tiny", "ssa", mode="demo")
