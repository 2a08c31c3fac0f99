"""pythia410m, vanilla attention: pre-training from scratch (--config.data.path=SLIMPAJAMA_DIR)."""

from configs import base


def get_config():
  return base.get_config("pythia410m", "vanilla", mode="pretrain")
