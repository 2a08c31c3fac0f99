"""Tokens/s of the data pipeline (read .jsonl.zst -> tokenize -> pack -> batch) against a training step's appetite.

  python bench/bench_data.py                          # GPT-2 tokenizer from ../shared/data when present
  python bench/bench_data.py --train_tokens_per_s=5e4 # skip measuring the tiny train step, use this figure

Reads the demo corpus (KJV in SlimPajama layout) with the batch shape of configs/tiny_ssa.py and prints
the pipeline's tokens/s (consumer doing nothing, after a warm-up), the single-thread `encode` rate for
reference, the tokens/s of a jitted tiny_ssa train step on this machine (measured here, or the flag), and
their ratio: above 1 means the pipeline keeps ahead of training.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import tiny_ssa  # noqa: E402
from ssa_jax.data import demo  # noqa: E402
from ssa_jax.data.pipeline import make_lm_iterator  # noqa: E402
from ssa_jax.data.readers import read_records  # noqa: E402
from ssa_jax.data.sources import list_files  # noqa: E402
from ssa_jax.data.tokenizer import load_tokenizer  # noqa: E402

GPT2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tokenizers" / "gpt2" / "tokenizer.json"


def pipeline_tokens_per_s(data_cfg, tok, seq_len, batch, batches, warmup):
  it = make_lm_iterator(data_cfg, split="train", seq_len=seq_len, global_batch_size=batch, process_index=0,
                        process_count=1, tokenizer=tok)
  for _ in range(warmup):
    next(it)
  # Count far more tokens than the pipeline holds ahead (~2 chunks of docs per stream + the queue),
  # so read-ahead done during the warm-up does not inflate the rate.
  t0 = time.perf_counter()
  n = sum(next(it)["tokens"].size for _ in range(batches))
  dt = time.perf_counter() - t0
  it.close()
  return n / dt


def encode_tokens_per_s(path, tok, max_docs=300):
  texts = [r.text for f in list_files(path, "train") for r in read_records(f) if r.text][:max_docs]
  t0 = time.perf_counter()
  n = sum(len(tok.encode(t)) for t in texts)
  return n / (time.perf_counter() - t0)


def train_tokens_per_s(config, steps=10, warmup=2):
  """Median tokens/s of the jitted tiny_ssa train step on random tokens (the lead's train step)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from ssa_jax import sharding  # pylint: disable=import-outside-toplevel
  from ssa_jax.config import model_config_from_dict  # pylint: disable=import-outside-toplevel
  from ssa_jax.model import Decoder, param_shapes  # pylint: disable=import-outside-toplevel
  from ssa_jax.train.optim import learning_rate_schedule, make_optimizer  # pylint: disable=import-outside-toplevel
  from ssa_jax.train.state import create_state, state_shardings  # pylint: disable=import-outside-toplevel
  from ssa_jax.train.step import jit_train_step  # pylint: disable=import-outside-toplevel

  model_cfg = model_config_from_dict(config.model)
  t = config.train
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, num_devices=-1)))
  rules = sharding.rules_from_config(config.sharding.rules)
  tx = make_optimizer(t, param_shapes(model_cfg))
  _, shardings = state_shardings(model_cfg, tx, mesh, rules)
  state = create_state(model_cfg, tx, shardings, jax.random.PRNGKey(0))
  step = jit_train_step(Decoder(model_cfg), tx, learning_rate_schedule(t), 1, shardings, mesh)
  rng = np.random.default_rng(0)
  host = rng.integers(0, model_cfg.vocab_size, (t.global_batch_size, t.seq_len + 1)).astype(np.int32)
  batch = sharding.global_batch({"tokens": host}, mesh)
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m["loss"])
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  return t.global_batch_size * t.seq_len / statistics.median(times)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--tokenizer", default=str(GPT2) if GPT2.exists() else "",
                 help="tokenizer path (default: GPT-2 from ../shared/data, else the demo BPE)")
  p.add_argument("--cache_dir", default="~/.cache/ssa_jax")
  p.add_argument("--tokens", type=float, default=8e6, help="tokens to time (several epochs of the KJV)")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--num_threads", type=int, default=2)
  p.add_argument("--train_tokens_per_s", type=float, default=0.0,
                 help="tokens/s of the training step; 0 = measure the tiny_ssa step here")
  args = p.parse_args()

  config = tiny_ssa.get_config()
  seq_len, batch = config.train.seq_len, config.train.global_batch_size
  data_cfg = config.data
  data_cfg.cache_dir, data_cfg.num_threads = args.cache_dir, args.num_threads
  path = demo.ensure_demo_corpus(args.cache_dir)
  tok_path = args.tokenizer or demo.ensure_demo_tokenizer(args.cache_dir, data_cfg.demo_vocab_size)
  tok = load_tokenizer(tok_path)
  dev = jax.devices()[0]
  print(f"device: {dev.platform} {dev.device_kind} (CPU cores {os.cpu_count()}); tokenizer {tok_path}; "
        f"batch {batch} x {seq_len + 1}; threads {args.num_threads}; corpus {path}")
  batches = int(args.tokens // (batch * (seq_len + 1)))
  pipe = pipeline_tokens_per_s(data_cfg, tok, seq_len, batch, batches, args.warmup)
  enc = encode_tokens_per_s(path, tok)
  print(f"pipeline: {pipe:,.0f} tokens/s   (single-thread encode alone: {enc:,.0f} tokens/s)")
  train = args.train_tokens_per_s
  source = "--train_tokens_per_s"
  if not train:
    train, source = train_tokens_per_s(config), "measured: tiny_ssa train step"
  print(f"train step: {train:,.0f} tokens/s ({source})")
  print(f"ratio pipeline / train step: {pipe / train:.1f}x")


if __name__ == "__main__":
  main()
