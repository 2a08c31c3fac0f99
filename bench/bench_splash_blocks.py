"""Splash attention's block sizes, compared by the TPU compiler ahead of time on a CPU host (no TPU needed).

  pip install -c constraints.txt 'jax[tpu]'   # the TPU compiler (libtpu); jax itself stays as it is
  JAX_PLATFORMS=cpu ALLOW_MULTIPLE_LIBTPU_LOAD=1 python bench/bench_splash_blocks.py
  ... --topology=v5p:2x2x1 --shapes=2048x12x64,8192x16x128 --blocks=128,256,512,1024 --tokens_per_chip=16384

For each shape (sequence x heads x head_dim) it compiles the causal attention forward + backward (bf16, the
batch split over the topology's chips, the gradient of a sum of the output) with XLA's kernel and with splash at
each block size (query and key-value blocks equal, forward and backward), and prints one JSON line each:
the compiler's temporary memory per chip, its roofline `optimal_seconds` and `bytes accessed`, the compile time,
and the splash kernels found in the program. The roofline gives a Pallas kernel no compute cost and no memory
traffic of its own, so for splash it measures only the work around the kernel (transposes, the backward's
o . do): it can rank memory and that surrounding work, not the kernel's speed, which only a chip can time.
A block size the compiler rejects (VMEM) prints its error.
"""

import argparse
import json
import re
import time

import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import NamedSharding, PartitionSpec as P

from ssa_jax.model.splash import splash_attention
from ssa_jax.runtime import sharding


def measure(mesh, shape, kernel: str, block: int | None, tokens_per_chip: int) -> dict:
  """Compile forward + backward for one (S, H, D) and kernel; the compiler's figures per chip."""
  S, H, D = shape
  chips = mesh.devices.size
  batch = max(1, tokens_per_chip // S) * chips
  spec = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
  args = [jax.ShapeDtypeStruct((batch, S, H, D), jnp.bfloat16, sharding=spec) for _ in range(3)]

  def loss(q, k, v):
    out = (splash_attention(q, k, v, block_q=block, block_kv=block) if kernel == "splash"
           else jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla"))
    return out.astype(jnp.float32).sum()

  row = dict(seq_len=S, heads=H, head_dim=D, batch_per_chip=batch // chips, kernel=kernel, block=block)
  start = time.time()
  try:
    with jax.set_mesh(mesh):
      compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
  except Exception as e:  # a block the compiler refuses: report it and go on
    return {**row, "error": str(e).splitlines()[0][:300]}
  memory, cost = compiled.memory_analysis(), compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  text = compiled.as_text()
  return {**row, "temp_mib": round(memory.temp_size_in_bytes / 2**20, 1),
          "args_mib": round(memory.argument_size_in_bytes / 2**20, 1),
          "optimal_seconds": cost.get("optimal_seconds"),
          "bytes_accessed_gb": round(cost.get("bytes accessed", 0) / 1e9, 3),
          "compile_s": round(time.time() - start, 1),
          "splash_kernels": sorted(set(re.findall(r"%(splash_m[hq]a_\w+?)(?:\.\d+)? = ", text)))}


def main() -> None:
  """One JSON line per (shape, kernel, block) on the topology's chips."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--topology", default="v5p:2x2x1", help="a Cloud TPU topology, e.g. v5p:2x2x1, v6e:2x2")
  parser.add_argument("--shapes", default="2048x12x64,8192x16x128", help="seq_len x heads x head_dim, comma-separated")
  parser.add_argument("--blocks", default="128,256,512,1024")
  parser.add_argument("--tokens_per_chip", type=int, default=16384, help="batch per chip = this / seq_len")
  args = parser.parse_args()
  topology = topologies.get_topology_desc(platform="tpu", topology_name=args.topology)
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1), topology.devices)
  print(json.dumps({"topology": args.topology, "device_kind": topology.devices[0].device_kind,
                    "chips": mesh.devices.size, "jax": jax.__version__}), flush=True)
  for shape_text in args.shapes.split(","):
    shape = tuple(int(x) for x in shape_text.split("x"))
    print(json.dumps(measure(mesh, shape, "xla", None, args.tokens_per_chip)), flush=True)
    for block in (int(b) for b in args.blocks.split(",")):
      print(json.dumps(measure(mesh, shape, "splash", block, args.tokens_per_chip)), flush=True)


if __name__ == "__main__":
  main()
