"""Tokens/s of the two data paths on all cores, and how many CPU cores one GPU's training step needs of each.

  python bench/bench_data.py                        # Pythia BPE from ../shared/data when present, seq 2048
  python bench/bench_data.py --gpu_tokens_per_s=4e5 # the appetite to compare with (one H100, Pythia-160M)
  python bench/bench_data.py --corpus=../shared/data/benchmarks/wikitext-2-raw --split=test  # Wikipedia text

Streaming: the demo corpus (KJV in SlimPajama layout, .jsonl.zst; or --corpus) read -> tokenized -> packed -> batched
by make_lm_iterator. Pre-tokenized: the same corpus written once by ssa_jax.data.tfds_builder as ArrayRecord
windows, read with grain (config.data.format='array_record'). Both at the batch shape given, consumer doing
nothing, after a warm-up, with `--num_threads` (default: every core). Besides wall-clock tokens/s it
reports tokens per CPU-second (the process's CPU time over all its threads): on a machine shared with other
work the wall rate drops, the CPU-second rate much less. Cores per GPU = the GPU's tokens/s divided by
tokens per CPU-second.
"""

import argparse
import os
import time
from pathlib import Path

from ssa_jax.data import demo
from ssa_jax.data.config import data_config
from ssa_jax.data.pipeline import make_lm_iterator
from ssa_jax.data.tfds_builder import build_tokenized
from ssa_jax.data.tokenizer import load_tokenizer

TOKENIZERS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tokenizers"


def tokens_per_s(args: argparse.Namespace, tokenizer=None, **data_fields) -> tuple[float, float]:
  """(tokens per wall second, tokens per CPU second) of --tokens read by config.data + `data_fields`, after --warmup.

  Far more batches than the read-ahead holds, so what was prepared during the warm-up does not count.
  """
  cfg = data_config()
  cfg.update(num_threads=args.num_threads, **data_fields)
  it = make_lm_iterator(cfg, split=args.split, seq_len=args.seq_len, global_batch_size=args.batch, process_index=0,
                        process_count=1, tokenizer=tokenizer)
  for _ in range(args.warmup):
    next(it)
  batches = max(1, int(args.tokens // (args.batch * (args.seq_len + 1))))
  t0, c0 = time.perf_counter(), time.process_time()
  n = sum(next(it)["tokens"].size for _ in range(batches))
  dt, dc = time.perf_counter() - t0, time.process_time() - c0
  it.close()
  return n / dt, n / dc


def main() -> None:
  """Times both data paths and prints their rates and cores per GPU."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  default_tok = next((str(TOKENIZERS / n / "tokenizer.json") for n in ("pythia", "gpt2")
                      if (TOKENIZERS / n / "tokenizer.json").exists()), "")
  p.add_argument("--tokenizer", default=default_tok, help="tokenizer path (default: Pythia, else GPT-2 from "
                 "../shared/data, else the demo BPE)")
  p.add_argument("--cache_dir", default="~/.cache/ssa_jax")
  p.add_argument("--corpus", default="", help="a data path as config.data.path takes it (default: the demo KJV; "
                 "its very repetitive text tokenizes faster than web text)")
  p.add_argument("--split", default="train")
  p.add_argument("--seq_len", type=int, default=2048)
  p.add_argument("--batch", type=int, default=8, help="global batch (one process)")
  p.add_argument("--tokens", type=float, default=8e6, help="tokens to time per path (several KJV epochs)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--num_threads", type=int, default=os.cpu_count())
  p.add_argument("--gpu_tokens_per_s", type=float, default=4e5,
                 help="one GPU's training appetite (measured: one H100, Pythia-160M)")
  args = p.parse_args()

  cache = os.path.expanduser(args.cache_dir)
  path = args.corpus or demo.ensure_demo_corpus(cache)
  tok_path = args.tokenizer or demo.ensure_demo_tokenizer(cache, data_config().demo_vocab_size)
  print(f"CPU cores {os.cpu_count()} (using {args.num_threads}); tokenizer {tok_path}; batch {args.batch} x "
        f"{args.seq_len + 1}; corpus {path}")
  stream = tokens_per_s(args, load_tokenizer(tok_path), path=path, tokenizer_path=tok_path, cache_dir=cache)

  t0 = time.perf_counter()
  builder = build_tokenized(path, tok_path, args.seq_len, os.path.join(cache, "tfds_bench"), splits=(args.split,))
  built = time.perf_counter() - t0
  windows = builder.info.splits[args.split].num_examples
  pretok = tokens_per_s(args, path=str(builder.data_dir), format="array_record")

  print(f"load average {os.getloadavg()[0]:.1f} (other work on the machine slows the wall rate)")
  print(f"{'path':14s} {'tokens/s':>12s} {'tokens/CPU-s':>13s} {'cores per GPU':>14s}")
  for name, (rate, per_cpu_s) in (("streaming", stream), ("pre-tokenized", pretok)):
    print(f"{name:14s} {rate:12,.0f} {per_cpu_s:13,.0f} {args.gpu_tokens_per_s / per_cpu_s:14.2f}")
  print(f"(GPU appetite {args.gpu_tokens_per_s:,.0f} tokens/s; the ArrayRecord dataset, {windows} windows, "
        f"{'was built in ' + format(built, '.1f') + ' s' if built > 1 else 'was already built'})")


if __name__ == "__main__":
  main()
