"""Train-step time of SSA base and weight sharing over vanilla, same model, batch and device, in one run.

  python bench/bench_step.py --model=tiny --batch=16 --seq_len=256            # CPU-sized
  python bench/bench_step.py --model=pythia160m --batch=8 --seq_len=2048 --dtype=bfloat16   # a GPU

Prints the fastest and the median step time (variants interleaved in rounds) of each variant, the ratio to vanilla, tokens/s and MFU (where the chip's peak is
known), and the device it ran on.
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

from configs import base, models  # noqa: E402
from ssa_jax import sharding  # noqa: E402
from ssa_jax.config import model_config_from_dict  # noqa: E402
from ssa_jax.model import Decoder, param_shapes  # noqa: E402
from ssa_jax.train import metrics  # noqa: E402
from ssa_jax.train.optim import learning_rate_schedule, make_optimizer  # noqa: E402
from ssa_jax.train.state import create_state, state_shardings  # noqa: E402
from ssa_jax.train.step import jit_train_step  # noqa: E402
import ml_collections  # noqa: E402


def build_variant(model_name, ssa, args):
  """(jitted step, initial state, model config) for one SSA variant of the preset."""
  mcfg = models.model_config(model_name, ssa)
  mcfg.dtype, mcfg.remat, mcfg.max_seq_len = args.dtype, args.remat, max(args.seq_len, mcfg.max_seq_len)
  model_cfg = model_config_from_dict(mcfg)
  train_cfg = ml_collections.ConfigDict(dict(lr=1e-4, warmup_steps=10, steps=1000, schedule="cosine", min_lr_ratio=0.1,
                                             b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0,
                                             temperature_lr_multiplier=1.0, temperatures_only=False))
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, num_devices=-1)))
  rules = sharding.rules_from_config(base.get_config(model_name, ssa).sharding.rules)
  tx = make_optimizer(train_cfg, param_shapes(model_cfg))
  _, shardings = state_shardings(model_cfg, tx, mesh, rules)
  state = create_state(model_cfg, tx, shardings, jax.random.PRNGKey(0))
  step = jit_train_step(Decoder(model_cfg), tx, learning_rate_schedule(train_cfg), 1, shardings, mesh)
  return step, state, model_cfg, mesh


def timed_steps(step, state, batches, n):
  """Runs n steps; returns (new state, list of per-step seconds)."""
  times = []
  for i in range(n):
    t0 = time.perf_counter()
    state, m = step(state, batches[i % len(batches)])
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t0)
  return state, times


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="tiny")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--remat", default="none")
  p.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--variants", default="vanilla,ssa,ssa_ws")
  args = p.parse_args()
  dev = jax.devices()[0]
  print(f"device: {dev.platform} {dev.device_kind} x{jax.device_count()} (CPU cores {os.cpu_count()}); "
        f"model {args.model}, batch {args.batch} x seq {args.seq_len}, {args.dtype}, remat {args.remat}")
  vocab = models.MODELS[args.model]["vocab_size"]
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, vocab, (args.batch, args.seq_len + 1)).astype(np.int32) for _ in range(4)]
  variants = args.variants.split(",")
  built = {v: build_variant(args.model, v, args) for v in variants}
  mesh = built[variants[0]][3]
  batches = [sharding.global_batch({"tokens": b}, mesh) for b in batches]
  states, times = {}, {v: [] for v in variants}
  for v, (step, state, _, _) in built.items():
    states[v], _ = timed_steps(step, state, batches, args.warmup)  # compile + warm up
  # Interleave the variants in rounds so that drifting machine load hits all of them alike.
  for _ in range(args.rounds):
    for v in variants:
      states[v], t = timed_steps(built[v][0], states[v], batches, args.steps)
      times[v] += t
  # The minimum is the least load-sensitive estimate on a shared machine (noise only ever adds time);
  # the median is printed beside it.
  results = {v: min(t) for v, t in times.items()}
  medians = {v: statistics.median(t) for v, t in times.items()}
  model_cfg = built[variants[-1]][2]
  vanilla_time = results.get("vanilla")
  peak = metrics.peak_flops_per_device(dev.device_kind)
  flops = metrics.flops_per_token(model_cfg, args.seq_len) * args.batch * args.seq_len
  for v, t in results.items():
    tps = args.batch * args.seq_len / t
    mfu = f"{flops / t / (peak * jax.device_count()):.1%}" if peak else "n/a (no peak for this device)"
    ratio = f"{t / vanilla_time:.3f}x vanilla" if vanilla_time else ""
    med_ratio = f"(median {medians[v] / medians['vanilla']:.3f}x)" if vanilla_time else ""
    print(f"{v:8s} step {t * 1e3:8.2f} ms  {ratio} {med_ratio}  {tps:10,.0f} tok/s  MFU {mfu}")


if __name__ == "__main__":
  main()
