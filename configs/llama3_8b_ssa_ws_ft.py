"""llama3_8b, SSA weight sharing (Q+V, token + position; < 0.5% new parameters): fine-tuning (--config.init.hf_dir=HF_DIR --config.data.path=DATA)."""

from configs import base


def get_config():
  return base.get_config("llama3_8b", "ssa_ws", mode="finetune")
