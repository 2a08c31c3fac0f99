"""Zero-shot evaluation with lm-evaluation-harness semantics (and passkey retrieval) -> results JSON.

  python eval.py --hf_dir=DIR --data_dir=BENCH_DIR --tasks=piqa,arc_easy,wikitext --output=results.json
  python eval.py --checkpoint=WORKDIR --data_dir=BENCH_DIR --tasks=lambada_openai,passkey --limit=100

Tasks: wikitext, lambada_openai, lambada_standard, piqa, hellaswag, winogrande, arc_easy, arc_challenge,
passkey. --data_dir holds the task files (piqa_validation.jsonl, arc_easy_test.jsonl, arc_challenge_test.jsonl,
winogrande_xl_validation.jsonl, lambada_openai_test.jsonl, lambada_standard_test.jsonl,
hellaswag_validation.jsonl, wikitext-2-raw/wiki.test.raw); a missing file is reported and the rest run.

The window (--max_length) defaults to a checkpoint's training window (its run config's train.seq_len), else the
model's max_seq_len; the console names it in one line.

Without --output the results go beside the model (WORKDIR/eval_results_stepN.json for a training workdir,
CHECKPOINT_ROOT/eval_results_stepN.json, HF_DIR/eval_results.json); the console says where. A request that
cannot run (no model source, unknown task, negative --limit, missing task files, a tokenizer that does not
fit the model) stops before the model loads with one `error: ...` line and exit code 2 (the traceback with
--verbosity=1); exit code 1 when the model loaded but no task ran.
"""

from __future__ import annotations

import sys

from absl import flags, logging

from ssa_jax.evaluate import load_model, run_eval
from ssa_jax.evaluate.cli import NOTHING_RAN_EXIT, USAGE_EXIT, USER_ERRORS, error_line, plan_eval, write_results
from ssa_jax.evaluate.config import eval_config
from ssa_jax.evaluate.loading import source_info
from ssa_jax.runtime import cli_errors
from ssa_jax.runtime.accelerator_check import warn_if_accelerator_unused

_DEFAULTS = eval_config()
FLAGS = flags.FLAGS
flags.DEFINE_string("hf_dir", "", "Hugging Face checkpoint directory (config.json + safetensors).")
flags.DEFINE_string("checkpoint", "", "ssa-jax orbax checkpoint: training workdir, checkpoint root or step dir.")
flags.DEFINE_string("tokenizer", "", "tokenizer.json / SentencePiece .model / dir; default: the source's own.")
flags.DEFINE_string("data_dir", "", "Directory holding the task files.")
flags.DEFINE_string("tasks", _DEFAULTS.tasks, "Comma-separated task names (passkey included).")
flags.DEFINE_integer("limit", _DEFAULTS.limit, "First N documents of each task (0: all).")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Rows per batch at max_length.")
flags.DEFINE_integer("max_length", _DEFAULTS.max_length, "Window in tokens (0: a checkpoint's training window, "
                     "config.train.seq_len, else the model's max_seq_len).")
flags.DEFINE_integer("pack_length", _DEFAULTS.pack_length, "Row length that short requests are packed into.")
flags.DEFINE_string("output", "", "Path of the results JSON (local or gs://); default: beside the model.")
flags.DEFINE_enum("add_bos", _DEFAULTS.add_bos, ["auto", "true", "false"],
                  "Prepend BOS: auto = the tokenizer's own default (Llama yes, GPT-2 / Pythia no).")
flags.DEFINE_integer("bootstrap_iters", _DEFAULTS.bootstrap_iters, "Bootstrap resamples (LAMBADA perplexity).")
flags.DEFINE_string("passkey_lengths", ",".join(map(str, _DEFAULTS.passkey.lengths)), "Passkey prompt lengths.")
flags.DEFINE_integer("passkey_trials", _DEFAULTS.passkey.trials, "Passkey prompts per length.")
flags.DEFINE_integer("passkey_seed", _DEFAULTS.passkey.seed, "Passkey seed.")
flags.DEFINE_string("dtype", "", "Compute dtype override (float32 / bfloat16); default: the model's.")


def main(argv) -> int:
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  try:
    if len(argv) > 1:
      raise ValueError(f"unexpected argument(s) {argv[1:]}; every option is a --flag (see --helpshort)")
    plan = plan_eval(hf_dir=FLAGS.hf_dir, checkpoint=FLAGS.checkpoint, tokenizer=FLAGS.tokenizer, tasks=FLAGS.tasks,
                     data_dir=FLAGS.data_dir, limit=FLAGS.limit, max_length=FLAGS.max_length,
                     batch_size=FLAGS.batch_size, pack_length=FLAGS.pack_length,
                     passkey_lengths=FLAGS.passkey_lengths, passkey_trials=FLAGS.passkey_trials,
                     passkey_seed=FLAGS.passkey_seed, output=FLAGS.output, dtype=FLAGS.dtype)
    print(f"[eval] {plan.window_note}", flush=True)
    warn_if_accelerator_unused()
    model, variables, _ = load_model(plan.source)
  except USER_ERRORS as e:
    if FLAGS.verbosity >= 1:  # with --verbosity=1 a user error keeps its traceback
      raise
    print(error_line(e), file=sys.stderr)
    return USAGE_EXIT
  if model.config != plan.model_config:  # the --dtype override
    model = type(model)(plan.model_config)
  model_args = ",".join(f"{k}={v}" for k, v in (("hf_dir", FLAGS.hf_dir), ("checkpoint", FLAGS.checkpoint),
                                                 ("tokenizer", plan.tokenizer_path)) if v)
  out = run_eval(model, variables, plan.tokenizer, plan.names, data_dir=FLAGS.data_dir or None, limit=FLAGS.limit,
                 batch_size=FLAGS.batch_size, max_length=plan.max_length, output=None,
                 extra=source_info(plan.source), add_bos=FLAGS.add_bos, bootstrap_iters=FLAGS.bootstrap_iters,
                 passkey=plan.passkey, model_args=model_args, pack_length=FLAGS.pack_length)
  written = write_results(out, plan)
  if written:
    print(f"[eval] results -> {written}{' (the default; --output=PATH to choose)' if plan.output_is_default else ''}",
          flush=True)
  if not out["results"]:
    print("error: no task ran: " + "; ".join(out["ssa_jax"]["missing_tasks"].values()), file=sys.stderr)
    return NOTHING_RAN_EXIT
  return 0


if __name__ == "__main__":
  # Flag mistakes as one line, Ctrl-C as `interrupted`; main reports the request's own mistakes itself, so
  # that an error inside the evaluation proper keeps its traceback.
  cli_errors.run(lambda argv: sys.exit(main(argv)), user_errors=(), config_flag_names=())
