"""Train-step time of SSA base and weight sharing over vanilla, same model, batch and device, in one run.

  python bench/bench_step.py --model=tiny --batch=16 --seq_len=256            # CPU-sized
  python bench/bench_step.py --model=pythia160m --batch=8 --seq_len=2048 --dtype=bfloat16 --peer=torch   # a GPU

Prints the device, the date, and for each variant the fastest and the median step time (variants interleaved
in rounds), the ratio to vanilla, tokens/s, and MFU where the chip's peak is known, with the model's FLOPs and
SSA's temperature FLOPs apart (metrics.flops_per_token / ssa_flops_per_token). A variant that runs out of
memory is reported as such and the others still run.

--peer=torch times the Hugging Face model of the same family and shapes (vanilla; for the Pythia presets
GPT-NeoX) on the same batch: torch.compile, bf16 autocast, SDPA, fused AdamW on CUDA (bench/peer_torch.py).
It runs first, in a subprocess, before JAX takes the accelerator's memory. Without a CUDA torch on a GPU
machine it is skipped with the reason; on a CPU-only machine it runs eagerly (tiny shapes only make sense).
--json=PATH also writes every figure to PATH (bench/gpu_report.sh builds its table from these).
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from configs import base, models  # noqa: E402
from ssa_jax.formats.hf import config_to_hf  # noqa: E402
from ssa_jax.model.config import model_config_from_dict  # noqa: E402
from ssa_jax.model.decoder import Decoder  # noqa: E402
from ssa_jax.model.params import param_counts, param_shapes  # noqa: E402
from ssa_jax.runtime import sharding  # noqa: E402
from ssa_jax.train import metrics  # noqa: E402
from ssa_jax.train.loss import DEFAULT_LOSS_CHUNK_SIZE  # noqa: E402
from ssa_jax.train.optim import learning_rate_schedule, make_optimizer  # noqa: E402
from ssa_jax.train.state import create_state, state_shardings  # noqa: E402
from ssa_jax.train.step import jit_train_step  # noqa: E402

PEER_SCRIPT = Path(__file__).resolve().parent / "peer_torch.py"


def variant_config(model_name, ssa, args):
  """The ModelConfig of one SSA variant ('vanilla', 'ssa', 'ssa_ws') of the preset, with the bench's settings."""
  mcfg = models.model_config(model_name, ssa)
  mcfg.dtype, mcfg.remat, mcfg.max_seq_len = args.dtype, args.remat, max(args.seq_len, mcfg.max_seq_len)
  return model_config_from_dict(mcfg)


def build_variant(model_name, ssa, args):
  """(jitted step, initial state, model config, mesh) for one SSA variant of the preset."""
  model_cfg = variant_config(model_name, ssa, args)
  train_cfg = ml_collections.ConfigDict(dict(lr=1e-4, warmup_steps=10, steps=1000, schedule="cosine", min_lr_ratio=0.1,
                                             b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0,
                                             temperature_scalar_lr_multiplier=1.0,
      temperature_matrix_lr_multiplier=1.0, temperatures_only=False))
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, num_devices=-1)))
  sharding.check_batch_divisible(args.batch, mesh, args.microbatches, where="--batch")
  rules = sharding.rules_from_config(base.get_config(model_name, ssa).sharding.rules)
  tx = make_optimizer(train_cfg, param_shapes(model_cfg), model_cfg)
  _, shardings = state_shardings(model_cfg, tx, mesh, rules)
  state = create_state(model_cfg, tx, shardings, jax.random.PRNGKey(0))
  step = jit_train_step(Decoder(model_cfg), tx, learning_rate_schedule(train_cfg), args.microbatches, shardings, mesh,
                        loss_chunk_size=args.loss_chunk_size)
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


def _out_of_memory(e: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e) or "out of memory" in str(e)


def run_peer(args) -> dict:
  """bench/peer_torch.py on the vanilla model's shapes, in a subprocess: its JSON result (or why it was skipped)."""
  cfg = variant_config(args.model, "vanilla", args)
  with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump(config_to_hf(cfg), f)
  cmd = [sys.executable, str(PEER_SCRIPT), f"--hf_config={f.name}", f"--batch={args.batch}",
         f"--seq_len={args.seq_len}", f"--dtype={args.dtype}", f"--steps={args.steps}", f"--rounds={args.rounds}",
         f"--warmup={args.warmup}"]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  finally:
    os.unlink(f.name)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode or not lines:
    return {"error": f"peer_torch.py exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
  return json.loads(lines[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="tiny")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--remat", default="none")
  p.add_argument("--microbatches", type=int, default=1, help="gradient accumulation steps (config.train.microbatches)")
  p.add_argument("--loss_chunk_size", type=int, default=DEFAULT_LOSS_CHUNK_SIZE,
                 help="positions per LM-head chunk of the loss; 0 = whole logits (config.train.loss_chunk_size)")
  p.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--variants", default="vanilla,ssa,ssa_ws")
  p.add_argument("--peer", default="none", choices=("none", "torch"))
  p.add_argument("--json", default="", help="also write the results to this file")
  args = p.parse_args()
  if args.model not in models.MODELS:
    p.error(f"--model: unknown preset {args.model!r}; expected one of {sorted(models.MODELS)}")
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  # The peer first: JAX would otherwise hold most of the accelerator's memory while it runs.
  peer = run_peer(args) if args.peer == "torch" else None

  dev = jax.devices()[0]
  device = f"{dev.platform} {dev.device_kind} x{jax.device_count()} (CPU cores {os.cpu_count()})"
  print(f"date: {date}\ndevice: {device}; jax {jax.__version__}\n"
        f"model {args.model}, batch {args.batch} x seq {args.seq_len}, {args.dtype}, remat {args.remat}, "
        f"microbatches {args.microbatches}, loss chunk {args.loss_chunk_size}")
  vocab = models.MODELS[args.model]["vocab_size"]
  rng = np.random.default_rng(0)
  host_batches = [rng.integers(0, vocab, (args.batch, args.seq_len + 1)).astype(np.int32) for _ in range(4)]
  variants = args.variants.split(",")
  built, errors, compile_s, states = {}, {}, {}, {}
  for v in variants:
    try:
      step, state, model_cfg, mesh = build_variant(args.model, v, args)
      batches = [sharding.global_batch({"tokens": b}, mesh) for b in host_batches]
      t0 = time.perf_counter()
      states[v], _ = timed_steps(step, state, batches, 1)  # compile + first step
      compile_s[v] = time.perf_counter() - t0
      states[v], _ = timed_steps(step, states[v], batches, max(args.warmup - 1, 0))
      built[v] = (step, model_cfg, batches)
    except Exception as e:  # pylint: disable=broad-except
      if not _out_of_memory(e):
        raise
      errors[v] = "out of memory: " + next((l for l in str(e).splitlines() if l.strip()), "")[:300]
      states.pop(v, None)
  times = {v: [] for v in built}
  # Interleave the variants in rounds so that drifting machine load hits all of them alike.
  for _ in range(args.rounds):
    for v, (step, _, batches) in built.items():
      states[v], t = timed_steps(step, states[v], batches, args.steps)
      times[v] += t

  # The minimum is the least load-sensitive estimate on a shared machine (noise only ever adds time);
  # the median is printed beside it.
  peak = metrics.peak_flops_per_device(dev.device_kind)
  n_dev, tokens = jax.device_count(), args.batch * args.seq_len
  fastest = {v: min(t) for v, t in times.items()}
  medians = {v: statistics.median(t) for v, t in times.items()}
  results = {}
  for v in variants:
    if v in errors:
      results[v] = {"error": errors[v]}
      print(f"{v:8s} {errors[v]}")
      continue
    model_cfg = built[v][1]
    tps = tokens / fastest[v]
    model_flops = metrics.flops_per_token(model_cfg, args.seq_len)
    ssa_flops = metrics.ssa_flops_per_token(model_cfg, args.seq_len)
    r = {"step_s": fastest[v], "step_s_median": medians[v], "first_step_s": compile_s[v], "tokens_per_s": tps,
         "model_flops_per_token": model_flops, "ssa_flops_per_token": ssa_flops,
         "mfu_model": metrics.mfu(tps, model_flops, peak, n_dev), "mfu_ssa": metrics.mfu(tps, ssa_flops, peak, n_dev)}
    if "vanilla" in fastest:
      r["vs_vanilla"], r["vs_vanilla_median"] = fastest[v] / fastest["vanilla"], medians[v] / medians["vanilla"]
    results[v] = r
    ratio = f"{r['vs_vanilla']:.3f}x vanilla (median {r['vs_vanilla_median']:.3f}x)" if "vs_vanilla" in r else ""
    mfu = (f"MFU {r['mfu_model']:.1%} model + {r['mfu_ssa']:.2%} SSA" if peak
           else f"MFU n/a (no peak for {dev.device_kind!r})")
    print(f"{v:8s} step {fastest[v] * 1e3:8.2f} ms  {ratio}  {tps:10,.0f} tok/s  {mfu}  "
          f"(first step incl. compile {compile_s[v]:.1f} s; {model_flops / 1e6:.1f}M model + "
          f"{ssa_flops / 1e6:.2f}M SSA FLOPs/token)")

  if peer is not None:
    if "tokens_per_s" in peer:
      vanilla_cfg = variant_config(args.model, "vanilla", args)
      peer["mfu_model"] = metrics.mfu(peer["tokens_per_s"], metrics.flops_per_token(vanilla_cfg, args.seq_len),
                                      metrics.peak_flops_per_device(peer["device"]), 1)
      ours = param_counts(vanilla_cfg)["params"]
      mfu = f"MFU {peer['mfu_model']:.1%}" if peer["mfu_model"] is not None else "MFU n/a"
      vs = (f"; vanilla is {results['vanilla']['tokens_per_s'] / peer['tokens_per_s']:.2f}x the peer"
            if "tokens_per_s" in results.get("vanilla", {}) else "")
      print(f"peer     step {peer['step_s'] * 1e3:8.2f} ms  {peer['tokens_per_s']:10,.0f} tok/s  {mfu}  "
            f"{peer['name']} on {peer['device']}, {peer['precision']}, compiled {peer['compiled']}, "
            f"fused AdamW {peer['fused_adamw']}, {peer['params']:,} params (ours {ours:,}){vs}")
    else:
      print(f"peer     {peer.get('skipped') or peer.get('error')}")
  if args.json:
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"date": date, "device": device, "device_kind": dev.device_kind,
                                           "args": vars(args), "variants": results, "peer": peer}, indent=2))


if __name__ == "__main__":
  main()
