"""Compile time of the train step against depth, scanned vs unrolled layers, in one run on one machine.

  python bench/bench_compile.py                          # Pythia-shaped, d=256, 4 / 8 / 16 / 32 layers, CPU
  python bench/bench_compile.py --d_model=768 --layers=12,24 --dtype=bfloat16   # on an accelerator

Lowers and compiles the full train step (forward, backward, AdamW) on abstract inputs (no parameter is
allocated) and prints, per depth, the seconds to lower + compile for `scan_layers` False and True, and the
ratio of each to the shallowest depth: unrolled grows with depth, scanned should stay roughly flat.
"""

import argparse
import datetime
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench_step import train_program  # noqa: E402  (this script's folder is on sys.path)
from configs import models  # noqa: E402
from ssa_jax.model.config import model_config_from_dict  # noqa: E402


def compile_seconds(layers: int, scan: bool, args: argparse.Namespace) -> float:
  """Seconds to lower and compile bench_step.py's train step of the `layers`-deep model."""
  mcfg = models.model_config("pythia160m", args.ssa)
  mcfg.update(dict(d_model=args.d_model, num_heads=args.d_model // 64, mlp_dim=4 * args.d_model, num_layers=layers,
                   vocab_size=args.vocab, max_seq_len=args.seq_len, dtype=args.dtype, scan_layers=scan,
                   remat=args.remat))
  _, abstract_state, _, step, _ = train_program(model_config_from_dict(mcfg))
  batch = {"tokens": jax.ShapeDtypeStruct((args.batch, args.seq_len + 1), jnp.int32)}  # laid out by the jit's shardings
  start = time.perf_counter()
  step.lower(abstract_state, batch).compile()
  return time.perf_counter() - start


def main() -> None:
  """Prints the compile seconds per depth, unrolled and scanned."""
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--layers", default="4,8,16,32")
  p.add_argument("--d_model", type=int, default=256)
  p.add_argument("--vocab", type=int, default=8192)
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--remat", default="none")
  p.add_argument("--ssa", default="ssa_ws", help="configs/models.py SSA preset: vanilla, ssa, ssa_ws")
  args = p.parse_args()
  print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()} ({jax.default_backend()}), "
        f"{datetime.date.today()}, d_model={args.d_model}, {args.ssa}, {args.dtype}, "
        f"batch {args.batch} x {args.seq_len}")
  print(f"{'layers':>6} | {'unrolled s':>10} | {'scanned s':>9} | {'unrolled / first':>16} | {'scanned / first':>15}")
  first = {}
  for layers in map(int, args.layers.split(",")):
    times = {scan: compile_seconds(layers, scan, args) for scan in (False, True)}
    first = first or times
    print(f"{layers:>6} | {times[False]:>10.1f} | {times[True]:>9.1f} | {times[False] / first[False]:>15.2f}x | "
          f"{times[True] / first[True]:>14.2f}x", flush=True)


if __name__ == "__main__":
  main()
