"""The evaluation settings as an ml_collections ConfigDict (eval.py's defaults; passkey wording lives here)."""

from __future__ import annotations

import ml_collections


def passkey_config() -> ml_collections.ConfigDict:
  """Passkey retrieval (Mohtashami & Jaggi's format, as used by YaRN and the paper's Table 4)."""
  c = ml_collections.ConfigDict()
  c.instruction = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
                   "I will quiz you about the important information there.")
  c.filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
  c.key_sentence = "The pass key is {key}. Remember it. {key} is the pass key."
  c.question = "What is the pass key? The pass key is"
  c.lengths = (256, 512, 1024)  # prompt lengths in tokens (the prompt is at most this long)
  c.trials = 10  # prompts per length, the key's depth drawn uniformly over the filler
  c.depth_buckets = 5  # depth histogram: [0, 0.2), [0.2, 0.4), ...
  c.digits = 5
  c.max_new_tokens = 8
  c.seed = 0
  return c


def eval_config() -> ml_collections.ConfigDict:
  """Defaults of eval.py / run_eval."""
  c = ml_collections.ConfigDict()
  c.tasks = "wikitext,lambada_openai,lambada_standard,piqa,hellaswag,winogrande,arc_easy,arc_challenge"
  c.limit = 0  # first N documents of each task; 0 = all
  c.batch_size = 16  # rows per batch at max_length (shorter buckets hold proportionally more)
  c.max_length = 0  # 0: eval.py takes a checkpoint's training window (train.seq_len), run_eval the model's max_seq_len
  c.pack_length = 512  # short requests are packed into rows of min(max_length, pack_length) tokens
  c.add_bos = "auto"  # 'auto' (the tokenizer's own default, as lm-eval >= 0.4.9.2), 'true', 'false'
  c.bootstrap_iters = 100_000  # LAMBADA perplexity stderr (lm-eval's default)
  c.matmul_precision = "auto"  # 'auto': 'highest' for float32 models (no TF32), else the JAX default
  c.vocab_slack = 1024  # the model's vocabulary may exceed the tokenizer's by this much (padding)
  c.passkey = passkey_config()
  return c
