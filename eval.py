"""Zero-shot evaluation with lm-evaluation-harness semantics (and passkey retrieval) -> results JSON.

  python eval.py --hf_dir=DIR --data_dir=BENCH_DIR --tasks=piqa,arc_easy,wikitext --output=results.json
  python eval.py --checkpoint=WORKDIR --data_dir=BENCH_DIR --tasks=lambada_openai,passkey --limit=100

Tasks: wikitext, lambada_openai, lambada_standard, piqa, hellaswag, winogrande, arc_easy, arc_challenge,
passkey. --data_dir holds the task files (piqa_validation.jsonl, arc_easy_test.jsonl, arc_challenge_test.jsonl,
winogrande_xl_validation.jsonl, lambada_openai_test.jsonl, lambada_standard_test.jsonl,
hellaswag_validation.jsonl, wikitext-2-raw/wiki.test.raw); a missing file is reported and the rest run.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from ssa_jax.evaluate.config import eval_config

_DEFAULTS = eval_config()
FLAGS = flags.FLAGS
flags.DEFINE_string("hf_dir", "", "Hugging Face checkpoint directory (config.json + safetensors).")
flags.DEFINE_string("checkpoint", "", "ssa-jax orbax checkpoint: training workdir, checkpoint root or step dir.")
flags.DEFINE_string("tokenizer", "", "tokenizer.json / SentencePiece .model / dir; default: the source's own.")
flags.DEFINE_string("data_dir", "", "Directory holding the task files.")
flags.DEFINE_string("tasks", _DEFAULTS.tasks, "Comma-separated task names (passkey included).")
flags.DEFINE_integer("limit", _DEFAULTS.limit, "First N documents of each task (0: all).")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Rows per batch at max_length.")
flags.DEFINE_integer("max_length", _DEFAULTS.max_length, "Context length (0: the model's).")
flags.DEFINE_integer("pack_length", _DEFAULTS.pack_length, "Row length that short requests are packed into.")
flags.DEFINE_string("output", "", "Path of the results JSON (local or gs://).")
flags.DEFINE_enum("add_bos", _DEFAULTS.add_bos, ["auto", "true", "false"],
                  "Prepend BOS: auto = the tokenizer's own default (Llama yes, GPT-2 / Pythia no).")
flags.DEFINE_integer("bootstrap_iters", _DEFAULTS.bootstrap_iters, "Bootstrap resamples (LAMBADA perplexity).")
flags.DEFINE_string("passkey_lengths", ",".join(map(str, _DEFAULTS.passkey.lengths)), "Passkey prompt lengths.")
flags.DEFINE_integer("passkey_trials", _DEFAULTS.passkey.trials, "Passkey prompts per length.")
flags.DEFINE_integer("passkey_seed", _DEFAULTS.passkey.seed, "Passkey seed.")
flags.DEFINE_string("dtype", "", "Compute dtype override (float32 / bfloat16); default: the model's.")


def main(argv) -> int:
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  import dataclasses

  from ssa_jax.data.tokenizer import load_tokenizer
  from ssa_jax.evaluate import ModelSource, load_model, run_eval
  from ssa_jax.evaluate.loading import source_info

  source = ModelSource(hf_dir=FLAGS.hf_dir, checkpoint=FLAGS.checkpoint).validate()
  # An explicit tokenizer is loaded before the (slow) model load, so that a bad path fails at once.
  tokenizer = load_tokenizer(FLAGS.tokenizer) if FLAGS.tokenizer else None
  model, params, own_tokenizer = load_model(source)
  if tokenizer is None:
    if not own_tokenizer:
      raise app.UsageError(f"{source.hf_dir or source.checkpoint} names no tokenizer: pass --tokenizer=PATH")
    tokenizer = load_tokenizer(own_tokenizer)
  if FLAGS.dtype:
    model = type(model)(dataclasses.replace(model.config, dtype=FLAGS.dtype).validate())
  passkey = eval_config().passkey
  passkey.lengths = tuple(int(x) for x in FLAGS.passkey_lengths.split(",") if x)
  passkey.trials, passkey.seed = FLAGS.passkey_trials, FLAGS.passkey_seed
  model_args = ",".join(f"{k}={v}" for k, v in (("hf_dir", FLAGS.hf_dir), ("checkpoint", FLAGS.checkpoint),
                                                 ("tokenizer", FLAGS.tokenizer or own_tokenizer)) if v)
  run_eval(model, params, tokenizer, FLAGS.tasks, data_dir=FLAGS.data_dir or None, limit=FLAGS.limit,
           batch_size=FLAGS.batch_size, max_length=FLAGS.max_length or None, output=FLAGS.output or None,
           extra=source_info(source), add_bos=FLAGS.add_bos, bootstrap_iters=FLAGS.bootstrap_iters, passkey=passkey,
           model_args=model_args, pack_length=FLAGS.pack_length)
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
