"""The full run config: model preset + SSA variant + mode, with the mesh / data / train / eval sections.

Modes: 'pretrain' (from scratch on SlimPajama: --config.data.path=...), 'finetune' (from a Hugging Face
checkpoint: --config.init.hf_dir=... --config.data.path=..., SSA parameters freshly initialised near identity),
'demo' (the offline demo corpus and its BPE; what configs/tiny_ssa.py runs).
"""

import ml_collections

from configs import models
from ssa_jax.data.config import data_config
from ssa_jax.runtime.distributed import distributed_config

# The paper's optimizer (AdamW, beta1 0.9, beta2 0.95) with Pythia's pre-training settings where it gives none.
PRETRAIN = dict(steps=28_600, global_batch_size=256, seq_len=2048, lr=6e-4, warmup_steps=286, min_lr_ratio=0.1,
                weight_decay=0.01)  # 28.6k steps x 524k tokens = 15B tokens, the paper's pre-training budget
# Appendix A's fine-tune: AdamW 0.9 / 0.95, lr 1e-6, no weight decay, no warmup, 3.5M tokens
# (107 steps x 16 x 2048 = 3.5M tokens). A constant rate: the paper names no decay.
FINETUNE = dict(steps=107, global_batch_size=16, seq_len=2048, lr=1e-6, warmup_steps=0, schedule="constant",
                min_lr_ratio=1.0, weight_decay=0.0)
# The temperatures' learning-rate multipliers in a fine-tune. The temperatures are new parameters: at lr 1e-6
# alone Adam moves each by about 1e-4 over the schedule, i.e. not at all. x1e4 on the single scalars (alpha,
# log_tau, SSMax's s, beta) lets a coefficient grow or shrink 2.9x; x30 on the matrices (the token MLP's w1 / w2,
# weight sharing's w) is the largest that keeps w1 well within its initial norm. Measured by
# `python -m ssa_jax.experiments.finetune_drift`; tests/test_finetune_lr.py holds the bounds.
FINETUNE_TEMPERATURE_LR = dict(temperature_scalar_lr_multiplier=1e4, temperature_matrix_lr_multiplier=30.0)
DEMO = dict(steps=600, global_batch_size=16, seq_len=128, lr=3e-3, warmup_steps=30, min_lr_ratio=0.1,
            weight_decay=0.01, log_every=20, eval_every=200, eval_batches=8, checkpoint_every=200)
# FINETUNE scaled to the demo (configs/tiny_ft.py): its 107 steps, the demo's windows of 128, 8 sequences a step
# (half the paper's 16: nine fine-tunes fit a 2-core CPU), and the paper's ratio of fine-tune to pre-training peak
# rate (1e-6 / 6e-4) applied to the demo's 3e-3: 5e-6. The temperatures are new parameters whose scale does not
# depend on the model's rate, so they keep the paper fine-tune's absolute rates (1e-6 x FINETUNE_TEMPERATURE_LR).
_DEMO_FT_LR = DEMO["lr"] * FINETUNE["lr"] / PRETRAIN["lr"]
DEMO_FINETUNE = dict(FINETUNE, seq_len=128, global_batch_size=8, lr=_DEMO_FT_LR, log_every=10, eval_every=107,
                     eval_batches=8, checkpoint_every=107,
                     **{k: round(v * FINETUNE["lr"] / _DEMO_FT_LR, 6) for k, v in FINETUNE_TEMPERATURE_LR.items()})


def _train_config(mode: str, max_seq_len: int) -> ml_collections.ConfigDict:
  """config.train: the defaults, then the mode's settings, in windows the model has (ssa_jax/train/sections.py
  types and checks each field)."""
  train = ml_collections.ConfigDict(dict(
      steps=1000, global_batch_size=32, seq_len=1024, microbatches=1,  # microbatches: gradient accumulation
      loss_chunk_size=256,  # positions per LM-head chunk of the loss; 0 = the whole (B, T, V) logits at once
      lr=3e-4, warmup_steps=100, schedule="cosine", min_lr_ratio=0.1,
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0,
      # SSA temperature parameters: lr x these, no weight decay. 'scalar': the single learned scalars (alpha,
      # the constant's log_tau, SSMax's s, the frequency beta); 'matrix': the token MLP's w1 / w2 and their
      # biases, weight sharing's w. Pre-training trains them like the rest; fine-tunes set them below.
      temperature_scalar_lr_multiplier=1.0, temperature_matrix_lr_multiplier=1.0,
      temperatures_only=False,  # train only the SSA temperatures (fine-tuning SSA into a frozen model)
      log_every=10, eval_every=1000, eval_batches=16,
      checkpoint_every=1000, keep_checkpoints=3, async_checkpoints=True,
      # Also a checkpoint at the first step that ends this many minutes after the last save (or the session's
      # start), whatever checkpoint_every says; 0 = off. Several processes: process 0's clock decides.
      checkpoint_every_minutes=0.0,
      # Zero-shot tasks scored while training, with lm-eval's semantics (the end-of-run scorer), into the metrics
      # as zero_shot/<task>/<metric>; their files are under config.eval.data_dir. A task that fails is a warning.
      zero_shot_every=0,  # score zero_shot_tasks every this many steps (metrics zero_shot/<task>/<metric>); 0 = off
      zero_shot_tasks="",  # comma-separated, of ssa_jax/evaluate/tasks.py (e.g. 'arc_easy,piqa'); files: eval.data_dir
      zero_shot_limit=100,  # the first N documents of each task (lm-eval's --limit); 0 = every document
      max_nonfinite_steps=5, tensorboard=True,
      preemption_deadline_s=300.0,  # from the first stop signal to exit, agreed or not; 0 = none
      layer_norms=True,  # log gradient, parameter and update norms per layer and per SSA temperature group
      profile_start_step=2,  # the jax.profiler trace starts after this many steps (past the first's compile)
      profile_num_steps=0,  # steps traced into WORKDIR/profile; 0 = no trace
      # Also log to Weights & Biases (pip install -e '.[wandb]'; WANDB_MODE=offline needs no network). The run's
      # W&B id is kept in WORKDIR/wandb_id, so a resumed run continues the same W&B run.
      wandb=False, wandb_project="ssa-jax", wandb_entity="",
      wandb_name="",  # '' = the workdir's name
  ))
  train.update({"pretrain": PRETRAIN, "finetune": FINETUNE, "demo": DEMO}[mode])
  if train.seq_len > max_seq_len:
    # A model with fewer positions (GPT-2: 1024) trains on windows it has, with the same tokens per step.
    factor = train.seq_len // max_seq_len
    train.seq_len = max_seq_len
    train.global_batch_size *= factor
  return train


def get_config(model: str = "tiny", ssa: str = "ssa", mode: str = "pretrain") -> ml_collections.ConfigDict:
  """Config for preset `model`, SSA variant `ssa` ('vanilla', 'ssa', 'ssa_ws'), `mode` (see module doc)."""
  if mode not in ("pretrain", "finetune", "demo"):
    raise ValueError(f"unknown mode {mode!r}")
  config = ml_collections.ConfigDict()
  config.mode = mode  # the run checks mode-specific requirements (finetune needs config.init.hf_dir)
  config.seed = 0
  # mode 'auto' | 'on' | 'off', coordinator_address, num_processes, process_id (ssa_jax/runtime/distributed.py)
  config.distributed = distributed_config()
  config.model = models.model_config(model, ssa)

  # Mesh axis sizes; -1 takes the remaining devices. num_devices -1 uses all of them.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, num_devices=-1))
  # Over several TPU slices the sizes above are one slice's; the data axis also spans the slices (-1: every slice
  # the devices belong to), so only the gradient reduction crosses the data-center network.
  config.mesh.dcn_data = -1
  # Logical parameter axes -> mesh axes (flax lm1b / MaxText vocabulary). Batches split over data x fsdp.
  config.sharding = ml_collections.ConfigDict()
  config.sharding.rules = [
      ["vocab", "tensor"], ["embed", "fsdp"], ["mlp", "tensor"], ["heads", "tensor"], ["kv_heads", "tensor"],
      ["head_dim", None], ["norm", None], ["ssa_hidden", None], ["ssa_heads", None],
      ["layers", None],  # the stacked-layer axis of scan_layers
  ]

  config.data = data_config()
  config.data.demo = mode == "demo"

  config.init = ml_collections.ConfigDict(dict(hf_dir=""))

  config.train = _train_config(mode, config.model.max_seq_len)
  # The learned position term starts at position_tau_at_end at the end of the training window (the paper's
  # context window), not at model.max_seq_len: Llama-2 / 3 / 3.1 train on 2048 of 4096 / 8192 / 131072
  # positions. A derived reference: it follows --config.train.seq_len unless set itself.
  config.model.ssa.position_reference_len = config.train.get_ref("seq_len") * 1

  # Evaluation of the final checkpoint into WORKDIR/results.json (see eval.py for the tasks).
  config.eval = ml_collections.ConfigDict(dict(
      at_end=mode == "demo", tasks="", data_dir="", limit=0, batch_size=16, passkey=mode == "demo",
      heldout_split="test"))  # end-of-run perplexity on this split of config.data.path ('' = none)

  if mode == "finetune":
    config.model.ssa.position_tau_at_end = 1.001  # near-identity start: the pretrained model's outputs at step 0
    config.train.update(FINETUNE_TEMPERATURE_LR)
  if models.MODELS[model]["d_model"] >= 4096:
    # 7B / 8B: fp32 parameters + Adam moments are ~84 GB, so they are sharded over every device (FSDP) rather
    # than replicated, and each block's activations are recomputed in the backward pass. The 32 layers run under
    # nn.scan: one block compiles instead of 32 (bench/bench_compile.py: flat in depth).
    config.mesh.update(dict(data=1, fsdp=-1))
    config.model.remat = "full"
    config.model.scan_layers = True
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
