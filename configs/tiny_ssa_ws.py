"""The embedded demo: a tiny Pythia-shaped model, SSA weight sharing (Q+V, token + position; < 0.5% new parameters), trained on the offline demo corpus, then evaluated."""

from configs import base


def get_config():
  return base.get_config("tiny", "ssa_ws", mode="demo")
