"""pythia160m, vanilla attention: fine-tuning (--config.init.hf_dir=HF_DIR --config.data.path=DATA)."""

from configs import base


def get_config():
  return base.get_config("pythia160m", "vanilla", mode="finetune")
