"""pythia410m, SSA base (Q+V, token + position temperatures): fine-tuning (--config.init.hf_dir=HF_DIR --config.data.path=DATA)."""

from configs import base


def get_config():
  return base.get_config("pythia410m", "ssa", mode="finetune")
