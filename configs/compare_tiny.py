"""The CPU comparison (python -m ssa_jax.experiments.compare): the tiny demo model on the demo corpus, a small budget.

100 steps x 16 sequences x 128 tokens (205k tokens) per run, validation every 25 steps on 8 batches (16k
tokens, the same for every run): three variants x two seeds in under 10 minutes on a 2-core CPU. A smoke-sized
comparison; raise --config.train.steps (and --config.train.eval_every) for one that can show something.
"""

from configs import base


def get_config():
  config = base.get_config("tiny", "vanilla", mode="demo")
  config.train.update(dict(steps=100, warmup_steps=10, eval_every=25, eval_batches=8, checkpoint_every=100,
                           log_every=10))
  config.eval.at_end = False  # the comparison evaluates the final checkpoints itself (--eval_tasks)
  config.eval.passkey = False
  return config
