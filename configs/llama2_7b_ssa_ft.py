"""llama2_7b, SSA base (Q+V, token + position temperatures): fine-tuning (--config.init.hf_dir=HF_DIR --config.data.path=DATA)."""

from configs import base


def get_config():
  return base.get_config("llama2_7b", "ssa", mode="finetune")
