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
import ml_collections  # noqa: E402

from configs import models  # noqa: E402
from ssa_jax.model.config import model_config_from_dict  # noqa: E402
from ssa_jax.model.decoder import Decoder  # noqa: E402
from ssa_jax.model.params import param_shapes  # noqa: E402
from ssa_jax.runtime import sharding  # noqa: E402
from ssa_jax.train.optim import learning_rate_schedule, make_optimizer  # noqa: E402
from ssa_jax.train.state import state_shardings  # noqa: E402
from ssa_jax.train.step import jit_train_step  # noqa: E402


def compile_seconds(layers: int, scan: bool, args) -> float:
  """Seconds to lower and compile one train step of the `layers`-deep model."""
  mcfg = models.model_config("pythia160m", args.ssa)
  mcfg.update(dict(d_model=args.d_model, num_heads=args.d_model // 64, mlp_dim=4 * args.d_model, num_layers=layers,
                   vocab_size=args.vocab, max_seq_len=args.seq_len, dtype=args.dtype, scan_layers=scan,
                   remat=args.remat))
  model_cfg = model_config_from_dict(mcfg)
  train_cfg = ml_collections.ConfigDict(dict(
      lr=1e-4, warmup_steps=10, steps=100, schedule="cosine", min_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.1, grad_clip=1.0, temperature_scalar_lr_multiplier=1.0,
      temperature_matrix_lr_multiplier=1.0, temperatures_only=False))
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1, num_devices=-1))
  rules = sharding.rules_from_config([["vocab", "tensor"], ["embed", "fsdp"], ["mlp", "tensor"],
                                      ["heads", "tensor"], ["kv_heads", "tensor"], ["layers", None]])
  tx = make_optimizer(train_cfg, param_shapes(model_cfg), model_cfg)
  abstract, shardings = state_shardings(model_cfg, tx, mesh, rules)
  state = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  batch = {"tokens": jax.ShapeDtypeStruct((args.batch, args.seq_len + 1), jnp.int32,
                                          sharding=sharding.batch_sharding(mesh))}
  step = jit_train_step(Decoder(model_cfg), tx, learning_rate_schedule(train_cfg), 1, shardings, mesh)
  start = time.perf_counter()
  step.lower(state, batch).compile()
  return time.perf_counter() - start


def main():
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
  depths = [int(x) for x in args.layers.split(",")]
  print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()} ({jax.default_backend()}), "
        f"{datetime.date.today()}, d_model={args.d_model}, {args.ssa}, {args.dtype}, batch {args.batch} x {args.seq_len}")
  print(f"{'layers':>6} | {'unrolled s':>10} | {'scanned s':>9} | {'unrolled / first':>16} | {'scanned / first':>15}")
  first = {}
  for layers in depths:
    times = {scan: compile_seconds(layers, scan, args) for scan in (False, True)}
    first = first or times
    print(f"{layers:>6} | {times[False]:>10.1f} | {times[True]:>9.1f} | {times[False] / first[False]:>15.2f}x | "
          f"{times[True] / first[True]:>14.2f}x", flush=True)


if __name__ == "__main__":
  main()
