"""The paper's fine-tune in miniature on the demo (python -m ssa_jax.experiments.finetune_demo): the tiny vanilla model, exported to HF, fine-tuned with the _ft settings scaled to the demo (--config.init.hf_dir=HF_DIR; SSA variants as --config.model.ssa.enabled=True or through the driver)."""

from configs import base


def get_config():
  config = base.get_config("tiny", "vanilla", mode="finetune")
  config.data.demo = True  # the demo corpus and its BPE, as the pretrained tiny model was trained on
  config.model.dtype = "float32"  # the CPU demo computes in fp32
  config.train.update(base.DEMO_FINETUNE)
  return config
