"""Requests/s of our scorer (eval.py's engine) vs lm-eval's `hf` model: same model, requests and machine.

A random-weight GPT-2 (transformers) with the real GPT-2 BPE is saved once; both sides score the same
(context, continuation) requests of the first --docs documents of each benchmark file in
../shared/data/benchmarks (PIQA, ARC-Easy, ARC-Challenge, Winogrande, LAMBADA; tokenization included on both
sides): lm-eval with `HFLM.loglikelihood` (torch), ours with `pair_requests` + `Scorer.score` (JAX, jitted,
prefix-sharing packed rows, all local devices). Ours runs twice: cold (including compilation) and warm.

  python bench/bench_eval.py --docs=100 --batch_size=16 --d_model=256 --layers=4
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import jax

from ssa_jax.data.tokenizer import load_tokenizer
from ssa_jax.evaluate.readers import read_task
from ssa_jax.evaluate.requests import pair_requests
from ssa_jax.evaluate.scoring import Scorer
from ssa_jax.evaluate.tasks import TASKS
from ssa_jax.formats.hf import from_hf

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TASK_NAMES = ("piqa", "arc_easy", "arc_challenge", "winogrande", "lambada_openai")


def task_pairs(data: Path, docs: int) -> list[tuple[str, str]]:
  """The (context, continuation) requests of the first `docs` documents of each task in DATA/benchmarks."""
  return [pair for name in TASK_NAMES for doc in read_task(TASKS[name], str(data / "benchmarks"), docs).docs
          for pair in doc.pairs]


def main() -> None:
  """Scores the same requests with lm-eval and with ours, and prints both rates."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--docs", type=int, default=100, help="documents per task")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--max_length", type=int, default=256)
  parser.add_argument("--data", type=Path, default=SHARED)
  args = parser.parse_args()
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  # The test extra's torch side (heavy, optional), imported after HF_HUB_OFFLINE is set: huggingface_hub reads it once.
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from lm_eval.api.instance import Instance  # pylint: disable=import-outside-toplevel
  from lm_eval.models.huggingface import HFLM  # pylint: disable=import-outside-toplevel

  pairs = task_pairs(args.data, args.docs)

  with tempfile.TemporaryDirectory() as tmp:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_embd=args.d_model, n_layer=args.layers,
                                  n_head=max(args.d_model // 64, 1), n_positions=args.max_length)
    transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(tmp)
    transformers.GPT2TokenizerFast(tokenizer_file=str(args.data / "tokenizers" / "gpt2" / "tokenizer.json"),
                                   bos_token="<|endoftext|>", eos_token="<|endoftext|>").save_pretrained(tmp)

    lm = HFLM(pretrained=tmp, max_length=args.max_length, dtype="float32", device="cpu", batch_size=args.batch_size)
    instances = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    t = time.perf_counter()
    ref = lm.loglikelihood(instances, disable_tqdm=True)
    lm_eval_s = time.perf_counter() - t

    tok = load_tokenizer(tmp)
    model, variables = from_hf(tmp)
    scorer = Scorer(model, variables, args.max_length, args.batch_size, show_progress=False)
    timings = []
    for _ in range(2):
      t = time.perf_counter()
      ll, _ = scorer.score(pair_requests(tok, pairs, args.max_length))
      timings.append(time.perf_counter() - t)

  max_rel = max(abs(a - r[0]) / max(abs(r[0]), 1e-9) for a, r in zip(ll, ref))
  n = len(pairs)
  dev = jax.devices()[0]
  print(f"device: {dev.platform} {dev.device_kind} x{jax.local_device_count()}, CPUs: {os.cpu_count()}, "
        f"torch threads: {torch.get_num_threads()}")
  print(f"model: GPT-2 d={args.d_model} layers={args.layers} vocab=50257, max_length={args.max_length}, "
        f"batch_size={args.batch_size}; {n} requests ({', '.join(TASK_NAMES)} x {args.docs} docs)")
  st = scorer.stats
  print(f"tokens per pass: lm-eval rows {st.tokens // 2:,} (before its padding); ours {st.computed_tokens // 2:,} "
        f"after prefix sharing ({st.computed_tokens / st.tokens:.2f}x), {st.padded_tokens // 2:,} with padding; "
        f"LM-head positions: lm-eval all, ours {st.head_positions // 2:,}")
  print(f"lm-eval hf   : {n / lm_eval_s:8.1f} req/s ({lm_eval_s:.2f} s)")
  print(f"ours (cold)  : {n / timings[0]:8.1f} req/s ({timings[0]:.2f} s, compilation included)")
  print(f"ours (warm)  : {n / timings[1]:8.1f} req/s ({timings[1]:.2f} s)")
  print(f"ratio warm: {lm_eval_s / timings[1]:.2f}x   cold: {lm_eval_s / timings[0]:.2f}x   "
        f"(max relative difference of the log-likelihoods: {max_rel:.1e})")


if __name__ == "__main__":
  main()
