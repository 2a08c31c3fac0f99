"""llama3_8b, SSA base (Q+V, token + position temperatures): pre-training from scratch (--config.data.path=SLIMPAJAMA_DIR)."""

from configs import base


def get_config():
  return base.get_config("llama3_8b", "ssa", mode="pretrain")
