"""Where a train step's time goes: FLOPs, bytes and seconds per compiled instruction (fusion), grouped by what it
serves, for one or more configs compiled for a target (the dry run's machinery, no accelerator needed).

  python bench/fusion_table.py --configs=pythia160m,pythia160m_ssa,pythia160m_ssa_ws --target=v5p-8 \
      --set=train.microbatches=2 --json=/tmp/fusions.json
  python bench/fusion_table.py --configs=pythia160m_ssa_ws --target=v5p-8 --set=model.num_layers=2 --top=30

Per config it compiles the dry run's estimate probes (ssa_jax.train.dry_run.estimate: one microbatch, 1 and 2
unscanned layers, and 1 layer with loss chunks twice as long): on a TPU target through `estimate` itself, whose
estimated_step_s it reports, on a GPU target the same probes directly (the GPU compiler gives no cost analysis).
Each probe's optimized HLO is read instruction by instruction (fusion bodies folded into their fusion; loop
bodies counted once, as the cost model does): bytes = operands + result at their tiled (TPU) layout size, FLOPs =
the fused dots / convolutions (2 x output x contraction) plus one per element of every other arithmetic op,
seconds = max(FLOPs / peak, bytes / HBM bandwidth), and on TPU the compiler's own estimated_cycles per
instruction. A category's step figure combines the probes as `estimate` does: M x (one + (L - 1) x (two - one)
+ (chunks - 1) x (wide - one)). `hlo_vs_compiler` compares the HLO count with the compiler's totals.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import ml_collections  # noqa: E402

from ssa_jax.train import compiled as compiled_lib, dry_run as dry_run_lib, metrics as metrics_lib  # noqa: E402
from ssa_jax.train import targets as targets_lib  # noqa: E402
from ssa_jax.train.preflight import prepare  # noqa: E402

# What an instruction serves, from its op_name metadata (first match wins; backward ops carry the same path
# under transpose(jvp(...))). SSA's own code sits under ssa_q / ssa_k / ssa_v.
CATEGORIES = (
    ("ssa temperature", r"/ssa_[qkv]/|ssa_scale"),
    ("attention projections", r"/attn/[qkv]/"),
    ("attention kernel", r"splash|dot_product_attention"),
    ("rope and layout", r"/attn/(?!o/)"),
    ("attention out", r"/attn/o/"),
    ("mlp", r"/mlp/"),
    ("norms", r"norm"),
    ("embedding", r"/embed/"),
    ("loss", r"while|lm_head|loss|log_softmax|logsumexp|take_along_axis"),
    ("optimizer", r"optax|adam|scale_by|clip|global_norm|apply_updates|tree_|jit\(_where\)"),
)
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id",
         "replica-id", "opt-barrier"}
_NO_FLOPS = _FREE | {"copy", "copy-start", "copy-done", "broadcast", "reshape", "transpose", "slice",
                     "dynamic-slice", "dynamic-update-slice", "concatenate", "pad", "iota", "convert", "gather",
                     "scatter", "select", "reverse", "custom-call", "fusion", "while", "call", "conditional",
                     "all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
                     "bitcast-convert", "compare", "and", "or", "not"}
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 0.5, "u4": 0.5}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][a-z0-9\-]*)\((.*)$")
_HEADER = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")


@dataclasses.dataclass
class Instr:
  """One HLO instruction: its name, result type text, opcode, operand names and the rest of its line."""

  name: str
  shape: str
  opcode: str
  operands: list[str]
  rest: str

  def attr(self, key: str) -> str | None:
    """The value of `key=` in the line (a computation name, dim_labels, ...), or None."""
    m = re.search(rf"\b{key}=%?([^\s,]+)", self.rest)
    return m.group(1) if m else None

  @property
  def op_name(self) -> str:
    m = re.search(r'op_name="([^"]*)"', self.rest)
    return m.group(1) if m else ""


def parse_hlo(text: str) -> tuple[dict[str, list[Instr]], str]:
  """({computation name: its instructions}, the entry computation's name) of an HLO module's text."""
  comps: dict[str, list[Instr]] = {}
  entry, current = "", None
  for line in text.splitlines():
    header = _HEADER.match(line)
    if header and line.rstrip().endswith("{"):
      current = comps.setdefault(header.group(1), [])
      entry = header.group(1) if line.startswith("ENTRY") else entry
      continue
    m = _INSTR.match(line) if current is not None else None
    if m:
      args, _, rest = _split_args(m.group(4))
      current.append(Instr(m.group(1), m.group(2), m.group(3), re.findall(r"%([\w.\-]+)", args), rest))
  return comps, entry


def _split_args(text: str) -> tuple[str, str, str]:
  """An instruction's operand list (up to its closing parenthesis) and the attributes after it."""
  depth = 0
  for i, ch in enumerate(text):
    depth += ch == "("
    if ch == ")":
      if depth == 0:
        return text[:i], ")", text[i + 1:]
      depth -= 1
  return text, "", ""


def array_bytes(shape: str) -> float:
  """Bytes of every array in a result type text, at its tiled layout's padded size (TPU T(a,b) tiles)."""
  total = 0.0
  for dtype, dims_text, layout in _ARRAY.findall(shape):
    dims = [int(d) for d in dims_text.split(",") if d]
    total += _DTYPE_BYTES.get(dtype, 4) * _padded_elements(dims, layout)
  return total


def _padded_elements(dims: list[int], layout: str) -> int:
  """Elements of an array of `dims` stored in `layout` ({minor_to_major:T(a,b)...}): the tile pads the most
  minor dims to multiples of the tile's."""
  m = re.match(r"\{([0-9,]*)(?::T\(([0-9,]+)\))?", layout or "")
  if not dims or not m or not m.group(2) or not m.group(1):
    return math.prod(dims)
  minor_to_major = [int(i) for i in m.group(1).split(",")]
  physical = [dims[i] for i in reversed(minor_to_major)]  # major to minor
  tile = [int(t) for t in m.group(2).split(",")]
  for k, t in enumerate(reversed(tile)):
    if k < len(physical):
      physical[-1 - k] = -(-physical[-1 - k] // t) * t
  return math.prod(physical)


def _elements(shape: str) -> int:
  return sum(math.prod(int(d) for d in dims.split(",") if d) for _, dims, _ in _ARRAY.findall(shape))


def instr_flops(instr: Instr, comps: dict[str, list[Instr]], shapes: dict[str, str]) -> float:
  """FLOPs of one instruction: a fusion's body summed; dots / convolutions 2 x output x contraction."""
  if instr.opcode == "fusion":
    body = instr.attr("calls")
    inner = comps.get(body, [])
    inner_shapes = {i.name: i.shape for i in inner}
    return sum(instr_flops(i, comps, inner_shapes) for i in inner)
  out = _elements(instr.shape)
  if instr.opcode == "convolution" and instr.operands:
    return 2.0 * out * _conv_contraction(instr, shapes)
  if instr.opcode == "dot" and instr.operands:
    lhs = _ARRAY.findall(shapes.get(instr.operands[0], ""))
    contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", instr.rest)
    if lhs and contracting:
      lhs_dims = [int(d) for d in lhs[0][1].split(",") if d]
      return 2.0 * out * math.prod(lhs_dims[int(i)] for i in contracting.group(1).split(",") if i)
  if instr.opcode in ("reduce", "reduce-window"):
    return float(sum(_elements(shapes.get(o, "")) for o in instr.operands[: max(1, len(instr.operands) // 2)]))
  return 0.0 if instr.opcode in _NO_FLOPS else float(out)


def _conv_contraction(instr: Instr, shapes: dict[str, str]) -> int:
  """Multiply-adds per output element of a convolution: the lhs feature size times its window, a window
  dimension counted no wider than the lhs extent it slides over (TPU writes batched matmuls as padded windows)."""
  lhs = _ARRAY.findall(shapes.get(instr.operands[0], ""))
  labels = re.search(r"dim_labels=([0-9a-z]+)_", instr.rest)
  if not lhs or not labels:
    return 1
  lhs_dims = [int(d) for d in lhs[0][1].split(",") if d]
  lhs_labels = labels.group(1)
  window = re.search(r"window=\{size=([0-9x]+)", instr.rest)
  sizes = [int(w) for w in window.group(1).split("x")] if window else []
  spatial = [lhs_dims[lhs_labels.index(str(i))] for i in range(len(sizes)) if str(i) in lhs_labels]
  return lhs_dims[lhs_labels.index("f")] * math.prod(min(w, n) for w, n in zip(sizes, spatial))


def _executed(comps: dict[str, list[Instr]], entry: str) -> Iterator[str]:
  """The computations that run as programs (entry, loop bodies and conditions, branches, calls), not fusion
  bodies or reducers; each once."""
  seen, todo = set(), [entry]
  while todo:
    name = todo.pop()
    if name in seen or name not in comps:
      continue
    seen.add(name)
    yield name
    for instr in comps[name]:
      if instr.opcode in ("while", "conditional", "call"):
        todo += re.findall(r"\b(?:body|condition|to_apply|true_computation|false_computation)=%([\w.\-]+)",
                           instr.rest)
        branches = re.search(r"branch_computations=\{([^}]*)\}", instr.rest)
        todo += re.findall(r"%([\w.\-]+)", branches.group(1)) if branches else []


def category(op_name: str) -> str:
  """The CATEGORIES name an op_name falls under ('other' when none)."""
  return next((name for name, pattern in CATEGORIES if re.search(pattern, op_name)), "other")


def instructions(hlo_text: str, peak_flops: float, bandwidth: float, clock_hz: float | None) -> list[dict]:
  """One row per executed instruction with a cost: name, opcode, category, op_name, flops, bytes, seconds
  (roofline), and on TPU the compiler's estimated_cycles (and seconds at `clock_hz`)."""
  comps, entry = parse_hlo(hlo_text)
  rows = []
  for comp in _executed(comps, entry):
    shapes = {i.name: i.shape for i in comps[comp]}
    for instr in comps[comp]:
      if instr.opcode in _FREE or instr.opcode in ("while", "call", "conditional"):
        continue
      nbytes = array_bytes(instr.shape) + sum(array_bytes(shapes.get(o, "")) for o in instr.operands)
      if instr.opcode in ("copy-done",):
        nbytes = 0.0  # its copy-start carries the transfer
      flops = instr_flops(instr, comps, shapes)
      cycles = re.search(r'"estimated_cycles":"(\d+)"', instr.rest)
      row = {"name": instr.name, "opcode": instr.opcode, "category": category(instr.op_name),
             "op_name": instr.op_name, "flops": flops, "bytes": nbytes,
             "seconds": max(flops / peak_flops, nbytes / bandwidth)}
      if cycles:
        row["cycles"] = int(cycles.group(1))
        if clock_hz:
          row["cycle_seconds"] = int(cycles.group(1)) / clock_hz
      rows.append(row)
  return rows


def by_category(rows: list[dict]) -> dict[str, dict[str, float]]:
  """{category: {'flops', 'bytes', 'seconds', 'cycles', 'n'}} summed over `rows`."""
  out: dict[str, dict[str, float]] = collections.defaultdict(lambda: dict(flops=0.0, bytes=0.0, seconds=0.0,
                                                                           cycles=0.0, n=0))
  for r in rows:
    c = out[r["category"]]
    for k in ("flops", "bytes", "seconds"):
      c[k] += r[k]
    c["cycles"] += r.get("cycles", 0)
    c["n"] += 1
  return dict(out)


def load_config(name: str, overrides: list[str]) -> ml_collections.ConfigDict:
  """configs/NAME.py's config with `overrides` ('a.b=value', parsed as the field's type) applied."""
  spec = importlib.util.spec_from_file_location(f"configs.{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for item in overrides:
    path, _, text = item.partition("=")
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
      node = node[p]
    old = node[leaf]
    node[leaf] = (text.lower() in ("1", "true")) if isinstance(old, bool) else type(old)(text) \
        if isinstance(old, (int, float)) and not isinstance(old, bool) else text
  return config


@contextlib.contextmanager
def _recorded_probes() -> Iterator[list]:
  """The programs `estimate` compiles, recorded (as HLO text with their roofline) as it reads their cost."""
  seen, real = [], compiled_lib.roofline

  def record(compiled):
    cost = real(compiled)
    seen.append((compiled.as_text(), cost))
    return cost

  compiled_lib.roofline = record
  try:
    yield seen
  finally:
    compiled_lib.roofline = real


def _probe(cfg, t, mesh, rules, layers: int, chunk: int, rows: int, eos_id: int | None) -> tuple[str, None]:
  """One of `estimate`'s probes compiled directly (GPU: `estimate` stops at the first, having no cost)."""
  step_fn, args = dry_run_lib._step_program(dataclasses.replace(cfg, num_layers=layers, scan_layers=False), t,
                                            mesh, rules, 1, chunk, rows, eos_id)
  return dry_run_lib._lower(step_fn, args, mesh).compile().as_text(), None


def compile_probes(config: ml_collections.ConfigDict, target: str) -> dict[str, Any]:
  """{'probes': {'one' / 'two' / 'wide': (HLO text, compiler roofline or None)}, 'estimate': estimate's
  fields (TPU), 'L', 'M', 'chunks', 'peak', 'bandwidth'} of `config` compiled for `target`."""
  spec = targets_lib.parse_target(target)
  targets_lib.require_compiler(spec)
  host = ml_collections.ConfigDict(config.to_dict())
  host.mesh.update(dict(data=1, fsdp=1, tensor=1, num_devices=1))
  run = prepare(host, None, dry_run=True)
  cfg, t = run.model_cfg, run.config.train
  devices = targets_lib.target_devices(spec)
  mesh = targets_lib.target_mesh(config.mesh, spec, devices)
  peak = metrics_lib.peak_flops_per_device(devices[0].device_kind)
  M, T, chunk = int(t.microbatches), int(t.seq_len), int(t.loss_chunk_size)
  chunks = 1 if chunk == 0 or chunk >= T else -(-T // chunk)
  rows = t.global_batch_size // M
  eos_id = dry_run_lib.document_eos_id(run)  # packed-document masking, as the dry run compiles it
  out = {"L": cfg.num_layers, "M": M, "chunks": chunks, "peak": peak, "bandwidth": spec.chip.hbm_bandwidth,
         "devices": f"{mesh.size} x {devices[0].device_kind}", "estimate": {}}
  if spec.chip.platform == "tpu":
    with _recorded_probes() as seen:
      out["estimate"] = dry_run_lib.estimate(cfg, t, mesh, run.rules, peak, 1, eos_id)
    names = ["one"] + (["two"] if cfg.num_layers > 1 else []) + (["wide"] if chunks > 1 else [])
    probes = dict(zip(names, seen))
  else:
    probes = {"one": _probe(cfg, t, mesh, run.rules, 1, chunk, rows, eos_id)}
    if cfg.num_layers > 1:
      probes["two"] = _probe(cfg, t, mesh, run.rules, 2, chunk, rows, eos_id)
    if chunks > 1:
      probes["wide"] = _probe(cfg, t, mesh, run.rules, 1, 2 * chunk, rows, eos_id)
  out["probes"] = {k: probes.get(k, probes["one"]) for k in ("one", "two", "wide")}
  return out


def step_accounting(compiled: dict[str, Any], clock_hz: float | None) -> dict[str, Any]:
  """Per category and per instruction of one probe set: the step's figures (estimate's combination of the
  probes), the one-layer probe's instructions, and the HLO count against the compiler's totals."""
  rows = {k: instructions(text, compiled["peak"], compiled["bandwidth"], clock_hz)
          for k, (text, _) in compiled["probes"].items()}
  cats = {k: by_category(r) for k, r in rows.items()}
  L, M, chunks = compiled["L"], compiled["M"], compiled["chunks"]
  zero = dict(flops=0.0, bytes=0.0, seconds=0.0, cycles=0.0, n=0)
  step = {}
  for name in sorted(set().union(*cats.values())):
    one, two, wide = (cats[k].get(name, zero) for k in ("one", "two", "wide"))
    step[name] = {f: M * (one[f] + (L - 1) * (two[f] - one[f]) + (chunks - 1) * (wide[f] - one[f]))
                  for f in ("flops", "bytes", "seconds", "cycles")}
  step["total"] = {f: sum(c[f] for c in step.values()) for f in ("flops", "bytes", "seconds", "cycles")}
  check = {}
  for k, (_, cost) in compiled["probes"].items():
    if cost:
      check[k] = {"hlo_bytes / compiler_bytes": sum(r["bytes"] for r in rows[k]) / cost["bytes_accessed"],
                  "hlo_flops / compiler_flops": sum(r["flops"] for r in rows[k]) / cost["flops"],
                  "hlo_seconds / compiler_seconds": sum(r["seconds"] for r in rows[k]) / cost["optimal_seconds"]}
  return {"step": step, "one_layer_instructions": rows["one"], "hlo_vs_compiler": check}


def op_name_diff(base_rows: list[dict], rows: list[dict], top: int) -> list[dict]:
  """The op_names whose instructions cost more seconds in `rows` than in `base_rows` (SSA's additions and
  enlargements), most first: {'op_name', 'category', 'seconds', 'bytes', 'flops', 'delta_seconds'}."""
  def total(rs):
    out = collections.defaultdict(lambda: dict(seconds=0.0, bytes=0.0, flops=0.0, category=""))
    for r in rs:
      key = re.sub(r"^jit\(train_step\)/", "", r["op_name"])
      for f in ("seconds", "bytes", "flops"):
        out[key][f] += r[f]
      out[key]["category"] = r["category"]
    return out
  base, new = total(base_rows), total(rows)
  diffs = [{"op_name": k, **v, "delta_seconds": v["seconds"] - base.get(k, {"seconds": 0.0})["seconds"]}
           for k, v in new.items()]
  return sorted((d for d in diffs if d["delta_seconds"] > 0), key=lambda d: -d["delta_seconds"])[:top]


def _print_report(results: dict[str, dict], top: int) -> None:
  """The comparison as text tables: per config the estimate, per category the step's seconds and bytes."""
  names = list(results)
  base = results[names[0]]
  print("config".ljust(28) + "estimated_step_s  ratio  hlo_step_s  hlo_bytes_GB")
  for n in names:
    r = results[n]
    est = r["estimate"].get("estimated_step_s")
    ratio = est / base["estimate"]["estimated_step_s"] if est and base["estimate"].get("estimated_step_s") else None
    tot = r["step"]["total"]
    print(f"{n:28s}{est or float('nan'):16.4f}  {ratio or float('nan'):5.3f}  {tot['seconds']:10.4f}"
          f"  {tot['bytes'] / 1e9:12.2f}")
  cats = sorted(set().union(*(r["step"] for r in results.values())) - {"total"},
                key=lambda c: -results[names[-1]]["step"].get(c, {"seconds": 0})["seconds"])
  print("\nper category, the step (seconds | GB):")
  print("category".ljust(24) + "".join(n[:22].rjust(24) for n in names))
  for c in cats + ["total"]:
    cells = [results[n]["step"].get(c, {"seconds": 0.0, "bytes": 0.0}) for n in names]
    print(c.ljust(24) + "".join(f"{x['seconds']:11.4f} |{x['bytes'] / 1e9:9.1f}  " for x in cells))
  for n in names[1:]:
    print(f"\n{n}: op_names costing more than in {names[0]} (one-layer probe, seconds of one microbatch):")
    for d in results[n]["added_vs_first"][:top]:
      print(f"  +{d['delta_seconds'] * 1e3:8.3f} ms  {d['bytes'] / 1e6:9.1f} MB  {d['flops'] / 1e9:8.2f} GF  "
            f"[{d['category']}] {d['op_name']}")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", required=True, help="comma-separated config names (configs/NAME.py); the "
                      "first is the base of the comparison")
  parser.add_argument("--target", default="v5p-8", help="an accelerator of ssa_jax.train.targets, e.g. v5p-8")
  parser.add_argument("--set", action="append", default=[], help="a config override a.b=value, for every config")
  parser.add_argument("--top", type=int, default=15, help="op_names listed per config in the comparison")
  parser.add_argument("--clock_ghz", type=float, default=0.0, help="TPU clock to turn estimated_cycles into "
                      "seconds (0: cycles only)")
  parser.add_argument("--json", default="", help="write the full accounting (every instruction) here")
  parser.add_argument("--dump_hlo", default="", help="a directory for each probe's optimized HLO text")
  args = parser.parse_args(argv)
  results = {}
  for name in args.configs.split(","):
    compiled = compile_probes(load_config(name, args.set), args.target)
    acct = step_accounting(compiled, args.clock_ghz * 1e9 or None)
    if args.dump_hlo:
      os.makedirs(args.dump_hlo, exist_ok=True)
      for probe, (text, _) in compiled["probes"].items():
        Path(args.dump_hlo, f"{name}.{probe}.hlo").write_text(text)
    results[name] = {"estimate": compiled["estimate"], "devices": compiled["devices"], **acct}
  first = results[next(iter(results))]["one_layer_instructions"]
  for r in results.values():
    r["added_vs_first"] = op_name_diff(first, r["one_layer_instructions"], 10 * args.top)
  _print_report(results, args.top)
  if args.json:
    Path(args.json).write_text(json.dumps({"target": args.target, "overrides": args.set, "configs": results},
                                          indent=1))


if __name__ == "__main__":
  main()
