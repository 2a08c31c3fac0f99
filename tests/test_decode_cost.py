"""bench/decode_cost.py: one KV-cache decoding step compiled by the TPU compiler on this CPU, costed whole."""

import importlib
import importlib.util

import pytest

from bench_modules import bench_module

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="needs the TPU compiler: pip install -e '.[tpu]'")


@needs_libtpu
def test_decode_step_cost_reads_the_cache_and_counts_ssa():
  decode_cost = bench_module("decode_cost")
  vanilla = importlib.import_module("configs.tiny").get_config()
  ssa = importlib.import_module("configs.tiny_ssa").get_config()
  short = decode_cost.decode_step_cost(vanilla, "v5p-8", batch=4, context=64)
  long = decode_cost.decode_step_cost(vanilla, "v5p-8", batch=4, context=1024)
  with_ssa = decode_cost.decode_step_cost(ssa, "v5p-8", batch=4, context=64)
  assert 0 < short["optimal_seconds"] < long["optimal_seconds"]
  # Every layer reads its cached keys and values at least once: 4 layers x (k, v) x 128 wide x float32, for the
  # one row a device holds (4 rows on 4 chips), per extra position.
  assert long["bytes_accessed"] - short["bytes_accessed"] >= 4 * 2 * 128 * 4 * (1024 - 64)
  # SSA base's token network (d x d/2 and d/2 x H per scaled component and layer) is in the program.
  assert with_ssa["flops"] > short["flops"] and with_ssa["bytes_accessed"] > short["bytes_accessed"]
