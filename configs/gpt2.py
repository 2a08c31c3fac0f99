"""gpt2, vanilla attention: pre-training from scratch (--config.data.path=SLIMPAJAMA_DIR)."""

from configs import base


def get_config():
  return base.get_config("gpt2", "vanilla", mode="pretrain")
