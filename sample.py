"""Sample continuations from a model (greedy or with temperature / top-k / top-p), with the KV cache.

  python sample.py --checkpoint=runs/tiny_ssa --prompt="In the beginning" --max_new_tokens=40
  python sample.py --hf_dir=DIR --prompts_file=prompts.txt --temperature=0.8 --top_p=0.95 --seed=1 --output=out.jsonl

--prompt may be given several times; --prompts_file holds one prompt a line (a .jsonl file: objects with a
"prompt" field). Each prompt's result is a JSON line with "prompt", "text" (the continuation) and "tokens" (its
ids), to --output or, without it, to stdout. --temperature=0 (the default) is greedy decoding; a sample is the
same for the same --seed whatever the batch. Generation stops at --max_new_tokens or at the tokenizer's EOS.
Mistakes in flags or the request print one `error: ...` line and exit 2 (--verbosity=1: the traceback).
"""

from __future__ import annotations

import json
import sys
import time

from absl import flags, logging
from etils import epath

from ssa_jax.evaluate.generate import generate
from ssa_jax.evaluate.loading import load_model
from ssa_jax.evaluate.sample_request import SampleRequest, plan_sampling
from ssa_jax.evaluate.sampling import Sampler
from ssa_jax.runtime import cli_errors

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "", "ssa-jax checkpoint: training workdir, checkpoint root or step dir.")
flags.DEFINE_string("hf_dir", "", "Hugging Face checkpoint directory (config.json + safetensors).")
flags.DEFINE_string("tokenizer", "", "tokenizer.json / SentencePiece .model / dir; default: the source's own.")
flags.DEFINE_multi_string("prompt", [], "A prompt (repeat the flag for several).")
flags.DEFINE_string("prompts_file", "", "A file of prompts: one a line, or JSON lines with a \"prompt\" field.")
flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt (fewer when EOS comes first).")
flags.DEFINE_float("temperature", 0.0, "0: greedy; else the softmax temperature of sampling.")
flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
flags.DEFINE_float("top_p", 1.0, "Sample among the most likely tokens whose probability reaches p (1: all).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("max_batch", 16, "Prompts decoded together (prompts of one length share a batch).")
flags.DEFINE_enum("add_bos", "auto", ["auto", "true", "false"],
                  "Prepend BOS: auto = the tokenizer's own default (Llama yes, GPT-2 / Pythia no).")
flags.DEFINE_string("output", "", "JSON lines file (local or gs://); default: stdout.")

USER_ERRORS = (ValueError, KeyError, OSError)


def _request() -> SampleRequest:
  sampler = Sampler(FLAGS.temperature, FLAGS.top_k, FLAGS.top_p, FLAGS.seed)
  return plan_sampling(hf_dir=FLAGS.hf_dir, checkpoint=FLAGS.checkpoint, tokenizer=FLAGS.tokenizer,
                       prompts=FLAGS.prompt, prompts_file=FLAGS.prompts_file, max_new_tokens=FLAGS.max_new_tokens,
                       max_batch=FLAGS.max_batch, add_bos=FLAGS.add_bos, sampler=sampler)


def main(argv: list[str]) -> int:
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  if len(argv) > 1:
    raise ValueError(f"unexpected argument(s) {argv[1:]}; every option is a --flag (see --helpshort)")
  request = _request()
  model, variables, _ = load_model(request.source)
  started = time.time()
  outputs = generate(model, variables, request.prompt_ids, request.max_new_tokens, request.sampler,
                     max_batch=request.max_batch, stop_ids=request.stop_ids)
  seconds = time.time() - started
  lines = [json.dumps({"prompt": p, "text": request.tokenizer.decode(ids), "tokens": ids})
           for p, ids in zip(request.prompts, outputs)]
  if FLAGS.output:
    epath.Path(FLAGS.output).write_text("".join(line + "\n" for line in lines))
  else:
    print("\n".join(lines), flush=True)
  total = sum(len(ids) for ids in outputs)
  print(f"[sample] {len(outputs)} prompt(s), {total} tokens in {seconds:.1f}s ({total / seconds:,.0f} tokens/s, "
        f"compilation included){' -> ' + FLAGS.output if FLAGS.output else ''}", file=sys.stderr, flush=True)
  return 0


if __name__ == "__main__":
  cli_errors.run(lambda argv: sys.exit(main(argv)), user_errors=USER_ERRORS, config_flag_names=())
