"""Train-step time of SSA base, weight sharing and the attention methods over vanilla, same model, batch and
device, in one run.

  python bench/bench_step.py --model=tiny --batch=16 --seq_len=256            # CPU-sized
  python bench/bench_step.py --model=pythia160m --batch=8 --seq_len=2048 --dtype=bfloat16 --peer=torch   # a GPU

Prints the device, the date, and for each variant the fastest and the median step time (variants interleaved
in rounds), the ratio to vanilla, tokens/s, and MFU where the chip's peak is known, with the model's FLOPs and
SSA's temperature FLOPs apart (metrics.decoder_flops_per_token / ssa_flops_per_token). A variant that runs out
of memory is reported as such and the others still run.

--peer=torch times the Hugging Face model of the same family and shapes (vanilla) on the same batch
(bench/peer_torch.py says how). It runs first, in a subprocess, before JAX takes the accelerator's memory.
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
import numpy as np  # noqa: E402

from configs import base, models  # noqa: E402
from ssa_jax.experiments.compare.cli import variant_parts  # noqa: E402
from ssa_jax.formats.hf import config_to_hf  # noqa: E402
from ssa_jax.model.config import ModelConfig, model_config_from_dict  # noqa: E402
from ssa_jax.model.decoder import Decoder  # noqa: E402
from ssa_jax.model.params import param_counts, param_shapes  # noqa: E402
from ssa_jax.runtime import sharding  # noqa: E402
from ssa_jax.train import metrics  # noqa: E402
from ssa_jax.train.loss import DEFAULT_LOSS_CHUNK_SIZE  # noqa: E402
from ssa_jax.train.optim import learning_rate_schedule, make_optimizer  # noqa: E402
from ssa_jax.train.state import create_state, state_shardings  # noqa: E402
from ssa_jax.train.step import jit_train_step  # noqa: E402


NORMS = "+norms"  # a variant with this suffix also computes the per-layer norms (config.train.layer_norms)


def variant_config(variant: str, args: argparse.Namespace) -> ModelConfig:
  """The ModelConfig of one comparison variant of --model ('vanilla', 'ssa', 'ssa_ws', an attention method such as
  'fox', or both joined as 'ssa+gated': compare.cli.variant_parts), with the bench's settings."""
  ssa, attention_kind = variant_parts(variant)
  mcfg = models.model_config(args.model, ssa)
  mcfg.attention_kind = attention_kind
  mcfg.dtype, mcfg.remat, mcfg.max_seq_len = args.dtype, args.remat, max(args.seq_len, mcfg.max_seq_len)
  return model_config_from_dict(mcfg)


def train_program(model_cfg: ModelConfig, microbatches: int = 1, loss_chunk_size: int = DEFAULT_LOSS_CHUNK_SIZE,
                  layer_norms: bool = False):
  """(optimizer, abstract state, its shardings, jitted train step, mesh): the pre-training optimizer and the
  sharding rules of configs/base.py on a data-parallel mesh of every device. bench_compile.py compiles this step."""
  config = base.get_config()  # the optimizer's values do not change the step's time, only its updates
  mesh = sharding.make_mesh(config.mesh)
  tx = make_optimizer(config.train, param_shapes(model_cfg), model_cfg)
  abstract, shardings = state_shardings(model_cfg, tx, mesh, sharding.rules_from_config(config.sharding.rules))
  step = jit_train_step(Decoder(model_cfg), tx, learning_rate_schedule(config.train), microbatches, shardings, mesh,
                        loss_chunk_size, layer_norms)
  return tx, abstract, shardings, step, mesh


def timed_steps(step, state, batches: list, n: int) -> tuple:
  """Runs n steps; returns (new state, list of per-step seconds)."""
  times = []
  for i in range(n):
    t0 = time.perf_counter()
    state, m = step(state, batches[i % len(batches)])
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t0)
  return state, times


def run_variants(args: argparse.Namespace) -> dict[str, dict]:
  """Each variant compiled, warmed up and timed in interleaved rounds: its config, first step's seconds (compile
  included) and step times, or {'error': ...} where it ran out of memory."""
  rng = np.random.default_rng(0)
  vocab = models.MODELS[args.model]["vocab_size"]
  host_batches = [rng.integers(0, vocab, (args.batch, args.seq_len + 1)).astype(np.int32) for _ in range(4)]
  runs = {}
  for v in args.variants.split(","):
    model_cfg = variant_config(v.removesuffix(NORMS), args)
    try:
      tx, _, shardings, step, mesh = train_program(model_cfg, args.microbatches, args.loss_chunk_size,
                                                   layer_norms=v.endswith(NORMS))
      sharding.check_batch_divisible(args.batch, mesh, args.microbatches, where="--batch")
      state = create_state(model_cfg, tx, shardings, jax.random.PRNGKey(0))
      batches = [sharding.global_batch({"tokens": b}, mesh) for b in host_batches]
      state, (first_s,) = timed_steps(step, state, batches, 1)  # compile + first step
      state, _ = timed_steps(step, state, batches, max(args.warmup - 1, 0))
      runs[v] = dict(cfg=model_cfg, step=step, state=state, batches=batches, first_s=first_s, times=[])
    except Exception as e:  # pylint: disable=broad-except
      if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
        raise
      runs[v] = {"error": "out of memory: " + next((l for l in str(e).splitlines() if l.strip()), "")[:300]}
  # Interleave the variants in rounds so that drifting machine load hits all of them alike.
  for _ in range(args.rounds):
    for run in runs.values():
      if "error" not in run:
        run["state"], t = timed_steps(run["step"], run["state"], run["batches"], args.steps)
        run["times"] += t
  return runs


def variant_results(runs: dict[str, dict], args: argparse.Namespace, device_kind: str) -> dict[str, dict]:
  """Prints and returns each variant's figures: step times, ratios to vanilla, tokens/s, FLOPs and MFU."""
  # The minimum is the least load-sensitive estimate on a shared machine (noise only ever adds time);
  # the median is printed beside it.
  peak, n_dev = metrics.peak_flops_per_device(device_kind), jax.device_count()
  vanilla = runs.get("vanilla", {}).get("times")
  results = {}
  for v, run in runs.items():
    if "error" in run:
      results[v] = {"error": run["error"]}
      print(f"{v:8s} {run['error']}")
      continue
    fastest, tps = min(run["times"]), args.batch * args.seq_len / min(run["times"])
    model_flops = metrics.decoder_flops_per_token(run["cfg"], args.seq_len)
    ssa_flops = metrics.ssa_flops_per_token(run["cfg"], args.seq_len)
    r = results[v] = {
        "step_s": fastest, "step_s_median": statistics.median(run["times"]), "first_step_s": run["first_s"],
        "tokens_per_s": tps, "model_flops_per_token": model_flops, "ssa_flops_per_token": ssa_flops,
        "mfu_model": metrics.mfu(tps, model_flops, peak, n_dev), "mfu_ssa": metrics.mfu(tps, ssa_flops, peak, n_dev)}
    ratio, base = "", runs.get(v.removesuffix(NORMS), {}).get("times")
    if v.endswith(NORMS) and base:
      r["vs_without_norms"] = fastest / min(base)
      ratio = f"{r['vs_without_norms']:.3f}x without norms; "
    if vanilla:
      r["vs_vanilla"], r["vs_vanilla_median"] = fastest / min(vanilla), r["step_s_median"] / statistics.median(vanilla)
      ratio += f"{r['vs_vanilla']:.3f}x vanilla (median {r['vs_vanilla_median']:.3f}x)"
    mfu = (f"MFU {r['mfu_model']:.1%} model + {r['mfu_ssa']:.2%} SSA" if peak
           else f"MFU n/a (no peak for {device_kind!r})")
    print(f"{v:8s} step {fastest * 1e3:8.2f} ms  {ratio}  {tps:10,.0f} tok/s  {mfu}  "
          f"(first step incl. compile {run['first_s']:.1f} s; {model_flops / 1e6:.1f}M model + "
          f"{ssa_flops / 1e6:.2f}M SSA FLOPs/token)")
  return results


def run_peer(vanilla_cfg: ModelConfig, args: argparse.Namespace) -> dict:
  """bench/peer_torch.py on the vanilla model's shapes, in a subprocess: its JSON result (or why it was skipped)."""
  with tempfile.TemporaryDirectory() as tmp:
    hf_config = Path(tmp) / "config.json"
    hf_config.write_text(json.dumps(config_to_hf(vanilla_cfg)))
    flags = [f"--{k}={getattr(args, k)}" for k in ("batch", "seq_len", "dtype", "warmup")] + [
        f"--steps={args.rounds * args.steps}"]  # the peer has no variants to interleave
    cmd = [sys.executable, str(Path(__file__).with_name("peer_torch.py")), f"--hf_config={hf_config}", *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode or not lines:
    return {"error": f"peer_torch.py exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
  return json.loads(lines[-1])


def main() -> None:
  """Times the variants (and the peer) and prints, optionally writes, the figures."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="tiny", choices=sorted(models.MODELS))
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
  p.add_argument("--variants", default="vanilla,ssa,ssa_ws",
                 help="comma-separated comparison variants (vanilla, ssa, ssa_ws, gated, diff, fox, leviathan, "
                 "ssa+gated, ...); a '+norms' suffix (ssa+norms) adds the per-layer norms")
  p.add_argument("--peer", default="none", choices=("none", "torch"))
  p.add_argument("--json", default="", help="also write the results to this file")
  args = p.parse_args()
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  vanilla_cfg = variant_config("vanilla", args)
  # The peer first: JAX would otherwise hold most of the accelerator's memory while it runs.
  peer = run_peer(vanilla_cfg, args) if args.peer == "torch" else None
  dev = jax.devices()[0]
  device = f"{dev.platform} {dev.device_kind} x{jax.device_count()} (CPU cores {os.cpu_count()})"
  print(f"date: {date}\ndevice: {device}; jax {jax.__version__}\n"
        f"model {args.model}, batch {args.batch} x seq {args.seq_len}, {args.dtype}, remat {args.remat}, "
        f"microbatches {args.microbatches}, loss chunk {args.loss_chunk_size}")
  results = variant_results(run_variants(args), args, dev.device_kind)
  if peer is not None and "tokens_per_s" not in peer:
    print(f"peer     {peer.get('skipped') or peer.get('error')}")
  elif peer is not None:
    peer["mfu_model"] = metrics.mfu(peer["tokens_per_s"], metrics.decoder_flops_per_token(vanilla_cfg, args.seq_len),
                                    metrics.peak_flops_per_device(peer["device"]), 1)
    mfu = f"MFU {peer['mfu_model']:.1%}" if peer["mfu_model"] is not None else "MFU n/a"
    vanilla_tps = results.get("vanilla", {}).get("tokens_per_s")
    vs = f"; vanilla is {vanilla_tps / peer['tokens_per_s']:.2f}x the peer" if vanilla_tps else ""
    print(f"peer     step {peer['step_s'] * 1e3:8.2f} ms  {peer['tokens_per_s']:10,.0f} tok/s  {mfu}  "
          f"{peer['name']} on {peer['device']}, {peer['precision']}, compiled {peer['compiled']}, fused AdamW "
          f"{peer['fused_adamw']}, {peer['params']:,} params (ours {param_counts(vanilla_cfg)['params']:,}){vs}")
  if args.json:
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"date": date, "device": device, "device_kind": dev.device_kind,
                                           "args": vars(args), "variants": results, "peer": peer}, indent=2))


if __name__ == "__main__":
  main()
