"""The full run config: model preset + SSA variant + mode, with the mesh / data / train / eval sections.

Modes: 'pretrain' (from scratch on SlimPajama: --config.data.path=...), 'finetune' (from a Hugging Face
checkpoint: --config.init.hf_dir=... --config.data.path=..., SSA parameters freshly initialised near identity),
'demo' (the offline demo corpus and its BPE; what configs/tiny_ssa.py runs).
"""

import ml_collections

from configs import models
from ssa_jax.data.config import data_config

# The paper's optimizer (AdamW, beta1 0.9, beta2 0.95) with Pythia's pre-training settings where it gives none.
PRETRAIN = dict(steps=28_600, global_batch_size=256, seq_len=2048, lr=6e-4, warmup_steps=286, min_lr_ratio=0.1,
                weight_decay=0.01)  # 28.6k steps x 524k tokens = 15B tokens (SSA.md)
FINETUNE = dict(steps=107, global_batch_size=16, seq_len=2048, lr=5e-5, warmup_steps=10, min_lr_ratio=0.1,
                weight_decay=0.0)  # 107 steps x 32.8k tokens = 3.5M tokens (SSA.md)
DEMO = dict(steps=600, global_batch_size=16, seq_len=128, lr=3e-3, warmup_steps=30, min_lr_ratio=0.1,
            weight_decay=0.01, log_every=20, eval_every=200, eval_batches=8, checkpoint_every=200)


def get_config(model: str = "tiny", ssa: str = "ssa", mode: str = "pretrain") -> ml_collections.ConfigDict:
  """Config for preset `model`, SSA variant `ssa` ('vanilla', 'ssa', 'ssa_ws'), `mode` (see module doc)."""
  if mode not in ("pretrain", "finetune", "demo"):
    raise ValueError(f"unknown mode {mode!r}")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.distributed = "auto"  # jax.distributed.initialize() when the environment shows several hosts
  config.model = models.model_config(model, ssa)

  # Mesh axis sizes; -1 takes the remaining devices. num_devices -1 uses all of them.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, num_devices=-1))
  # Logical parameter axes -> mesh axes (flax lm1b / MaxText vocabulary). Batches split over data x fsdp.
  config.sharding = ml_collections.ConfigDict()
  config.sharding.rules = [
      ["vocab", "tensor"], ["embed", "fsdp"], ["mlp", "tensor"], ["heads", "tensor"], ["kv_heads", "tensor"],
      ["head_dim", None], ["norm", None], ["ssa_hidden", None],
  ]

  config.data = data_config()
  config.data.demo = mode == "demo"

  config.init = ml_collections.ConfigDict(dict(hf_dir=""))

  config.train = ml_collections.ConfigDict(dict(
      steps=1000, global_batch_size=32, seq_len=1024, microbatches=1,  # microbatches: gradient accumulation
      lr=3e-4, warmup_steps=100, schedule="cosine", min_lr_ratio=0.1,
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0,
      temperature_lr_multiplier=1.0,  # SSA temperature parameters: lr x this, no weight decay
      temperatures_only=False,  # train only the SSA temperatures (fine-tuning SSA into a frozen model)
      log_every=10, eval_every=1000, eval_batches=16,
      checkpoint_every=1000, keep_checkpoints=3, async_checkpoints=True,
      max_nonfinite_steps=5, tensorboard=True,
  ))
  config.train.update({"pretrain": PRETRAIN, "finetune": FINETUNE, "demo": DEMO}[mode])

  # Evaluation of the final checkpoint into WORKDIR/results.json (see eval.py for the tasks).
  config.eval = ml_collections.ConfigDict(dict(
      at_end=mode == "demo", tasks="", data_dir="", limit=0, batch_size=16, passkey=mode == "demo"))

  if mode == "finetune":
    config.model.ssa.position_tau_at_end = 1.001  # near-identity start: the pretrained model's outputs at step 0
    config.train.temperature_lr_multiplier = 20.0  # the new temperature weights start from zero
  # bf16 compute on accelerators (params and optimizer state stay fp32); the CPU demo computes in fp32.
  config.model.dtype = "float32" if mode == "demo" else "bfloat16"
  return config


def study_config(ssa: str) -> ml_collections.ConfigDict:
  """The small real-text study (README, "Small real-text study"): one budget for vanilla / SSA / SSA-WS."""
  config = get_config("tiny", ssa, mode="demo")
  # 600 steps x 16 x 128 tokens (1.2M tokens), about 5 minutes on a 2-core CPU.
  config.train.update(dict(steps=600, global_batch_size=16, seq_len=128, eval_every=100, eval_batches=8,
                           checkpoint_every=600))
  config.seed = 0
  config.data.seed = 0
  config.eval.at_end = False  # the study compares validation perplexity only
  return config
