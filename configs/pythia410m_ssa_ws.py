"""pythia410m, SSA weight sharing (Q+V, token + position; < 0.5% new parameters): pre-training from scratch (--config.data.path=SLIMPAJAMA_DIR)."""

from configs import base


def get_config():
  return base.get_config("pythia410m", "ssa_ws", mode="pretrain")
