"""Tiny run configs for the training tests (built on configs/base.py)."""

from configs import base


def tiny_run_config(data_path: str, tokenizer_path: str, **train):
  """A 2-layer SSA model on a corpus the test wrote; fp32; logs and checkpoints often."""
  config = base.get_config("tiny", "ssa", mode="demo")
  m = config.model
  m.d_model, m.num_layers, m.num_heads, m.mlp_dim, m.max_seq_len = 32, 2, 4, 64, 64
  config.data.path = data_path
  config.data.tokenizer_path = tokenizer_path
  config.train.update(dict(steps=5, global_batch_size=8, seq_len=16, warmup_steps=2, log_every=1, eval_every=0,
                           eval_batches=2, checkpoint_every=5, tensorboard=False))
  config.train.update(train)
  config.eval.at_end = False
  config.eval.passkey = False
  return config
