"""llama2_7b, vanilla attention: fine-tuning (--config.init.hf_dir=HF_DIR --config.data.path=DATA)."""

from configs import base


def get_config():
  return base.get_config("llama2_7b", "vanilla", mode="finetune")
