"""SSA's cost where the paper claims it is negligible: one decoding step with the KV cache (inference latency),
by the TPU compiler's roofline, configs side by side on one target (no accelerator needed).

  python bench/decode_cost.py --configs=pythia160m,pythia160m_ssa,pythia160m_ssa_ws --target=v5p-8 --batch=8,64

The step is what `evaluate/generate.py` runs per token: the model on one new token per row, reading and
extending a cache of --context positions. Layers are unrolled, so the cost model counts every one (it counts a
loop's body once), and attention over a cache is XLA's, not a Pallas kernel, so nothing in the program is left
uncosted. The parameters are held in the compute dtype, as a server would hold them (--param_dtype=float32: as
training keeps them, the step's program casting them). The figure is the compiler's `optimal_seconds` (per
instruction the larger of FLOPs / peak and bytes / bandwidth, summed): a lower bound for ranking variants, not a
measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from fusion_table import load_config
from ssa_jax.model.decoder import Decoder, init_cache
from ssa_jax.model.params import boxed_variable_shapes, variable_shapes, variable_shardings
from ssa_jax.train import compiled as compiled_lib
from ssa_jax.train import dry_run as dry_run_lib
from ssa_jax.train import targets as targets_lib


def decode_step_cost(config, target: str, batch: int, context: int, param_dtype: str = "compute") -> dict:
  """The compiler's roofline of one decoding step of `config` on `target`: {'optimal_seconds', 'flops',
  'bytes_accessed'} per device, and the compile's seconds. `param_dtype`: 'compute' or 'float32'."""
  run, mesh, _ = dry_run_lib.setup(config, targets_lib.parse_target(target))
  cfg = dataclasses.replace(run.model_cfg, scan_layers=False, remat="none")
  model = Decoder(cfg)
  held = jnp.dtype(cfg.dtype if param_dtype == "compute" else param_dtype)
  params = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, held if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype,
                                        sharding=s),
      variable_shapes(cfg), variable_shardings(boxed_variable_shapes(cfg), mesh, run.rules))
  rows = NamedSharding(mesh, PartitionSpec(mesh.axis_names))  # the batch over every device
  scalar = NamedSharding(mesh, PartitionSpec())
  cache = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rows if a.ndim else scalar),
                                 jax.eval_shape(lambda: init_cache(cfg, batch, context)))
  tokens = jax.ShapeDtypeStruct((batch, 1), jnp.int32, sharding=rows)

  def step(variables, tokens_B1, cache):
    logits_B1V, cache = model.apply(variables, tokens_B1, cache=cache)
    return logits_B1V[:, -1], cache

  t0 = time.time()
  with jax.set_mesh(mesh):
    compiled = jax.jit(step, donate_argnums=2).lower(params, tokens, cache).compile()
  cost = compiled_lib.roofline(compiled)
  if cost is None:
    raise SystemExit(f"{target}: the compiler gave no cost analysis (a GPU target has none)")
  devices = f"{mesh.size} x {mesh.devices.flat[0].device_kind}"
  return {**cost, "compile_s": round(time.time() - t0, 1), "devices": devices}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", required=True, help="comma-separated config names; the first is the base")
  parser.add_argument("--target", default="v5p-8", help="a TPU target of ssa_jax.train.targets")
  parser.add_argument("--batch", default="8", help="comma-separated rows decoded together (each a multiple of "
                      "the target's device count)")
  parser.add_argument("--context", type=int, default=2048, help="the KV cache's positions")
  parser.add_argument("--param_dtype", default="compute", choices=("compute", "float32"),
                      help="the dtype the parameters are held in")
  parser.add_argument("--set", action="append", default=[], help="a config override a.b=value, for every config")
  args = parser.parse_args(argv)
  names = args.configs.split(",")
  print(f"one decoding step, {args.context}-position KV cache, parameters in {args.param_dtype} dtype, target "
        f"{args.target} (the compiler's roofline)")
  print(f"{'config':24s} {'batch':>5s} {'step_us':>9s} {'ratio':>6s} {'MB/device':>10s} {'GFLOP/device':>12s}")
  for batch in (int(b) for b in args.batch.split(",")):
    base = None
    for name in names:
      cost = decode_step_cost(load_config(name, args.set), args.target, batch, args.context, args.param_dtype)
      base = base or cost["optimal_seconds"]
      print(f"{name:24s} {batch:5d} {cost['optimal_seconds'] * 1e6:9.1f} {cost['optimal_seconds'] / base:6.3f} "
            f"{cost['bytes_accessed'] / 1e6:10.1f} {cost['flops'] / 1e9:12.3f}   ({cost['devices']}, "
            f"compiled in {cost['compile_s']} s)", flush=True)


if __name__ == "__main__":
  main()
