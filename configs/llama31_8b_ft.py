"""llama31_8b (Llama-3.1-8B: 131072 positions through the llama3 rope scaling), vanilla attention: fine-tuning (--config.init.hf_dir=HF_DIR --config.data.path=DATA)."""

from configs import base


def get_config():
  return base.get_config("llama31_8b", "vanilla", mode="finetune")
