"""Small real-text study (vanilla): the tiny model on the demo corpus, same seed / steps / batch as its two siblings.

configs/study_vanilla.py, study_ssa.py and study_ssa_ws.py differ only in the SSA variant, so their final
validation perplexities and curves compare like with like (docs/reproducing.md, "Small real-text study").
"""

from configs import base


def get_config():
  config = base.get_config("tiny", "vanilla", mode="demo")
  # One budget for all three runs: 600 steps x 16 x 128 tokens (1.2M tokens), about 5 minutes on a 2-core CPU.
  config.train.steps = 600
  config.train.global_batch_size = 16
  config.train.seq_len = 128
  config.train.eval_every = 100  # a validation point every 100 steps for the val_ppl curves
  config.train.eval_batches = 8
  config.train.checkpoint_every = 600
  config.seed = 0
  config.data.seed = 0
  config.eval.at_end = False  # the study compares validation perplexity only
  return config
