"""What crosses the data-center network: every collective of a config's train step compiled for K TPU slices.

  python bench/slice_collectives.py --config=configs/pythia160m_ssa.py --config.model.scan_layers=True \
      --config.mesh.data=1 --config.mesh.fsdp=-1 --target=v5p-8 --target_slices=2 --out=/tmp/collectives.json

compiles the step as `train.py --dry_run --target=v5p-8 --target_slices=2` does (libtpu on this CPU, nothing
runs; a minute or more for Pythia-160M), prints each collective whose device groups cross slices (kind, shape,
bytes a device sends, times a step, and the op_name of what it carries: which parameter's gradient, the loss),
a count of those that stay inside a slice, and the totals against what a data-parallel gradient reduction must
move (each device's parameter shards, params / fsdp x tensor); --out gets every collective as JSON.

Two programs are read. libtpu partitions the step for all K x N devices (one SPMD program, replica groups over
all of them, op_name metadata on each collective); its Megascale pipeline then rewrites each collective whose
groups cross slices into a host transfer (`send` / `recv` tagged `_xla_megascale_transfer_type`, rendezvous =
the collective's name) that the megascale runtime carries over the DCN, and compiles one slice's program
(num_partitions = N). The first is dumped (XLA's xla_dump_to, the module before the pass cross-slice-rewrites):
device ids there index the mesh's devices, whose slice_index says which slice each is in. The second, the
optimized program, gives the buffers actually sent (in the TPU's tiled layout: a minor dimension is padded to a
multiple of 128, so a shard 32 wide sends 4x its bytes). A collective inside a loop (scanned layers,
microbatches, loss chunks) counts once per trip.
"""

from __future__ import annotations

import os

# Before jax is imported: libtpu compiles here without a TPU, and other processes may hold libtpu too.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import collections
import dataclasses
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from ssa_jax.train.dry_run import compile_on_target, mesh_slices  # noqa: E402

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "all-reduce-start", "all-gather-start", "collective-permute-start", "ragged-all-to-all")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "f8e4m3fn": 1, "f8e5m2": 1}
# The dumped module: the global program just before libtpu turns cross-slice collectives into DCN transfers.
BEFORE_DCN = "Megascale.after_pipeline-start.before_cross-slice-rewrites"
DUMP_OPTIONS = {"xla_dump_hlo_pipeline_re": "Megascale", "xla_dump_hlo_pass_re": ".*"}
# Elements a step may sum across slices beyond the parameter shards: the loss, token counts and metrics.
STEP_SUMS = 16 * 1024
_LINE = re.compile(r"^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<type>.*?) (?P<op>[a-z][a-z0-9\-]*)\((?P<rest>.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(?P<name>[\w.\-]+) \(.*\{\s*$")  # at column 0, unlike instructions
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+[0-9]*[a-z0-9]*)\[(?P<dims>[0-9,]*)\]")

@dataclasses.dataclass
class Instr:
  """One HLO instruction: its name, result type, opcode, operand names, attributes and op_name."""

  name: str
  type: str
  op: str
  operands: list[str]
  args: str  # the text between the parentheses (a constant's literal)
  attrs: str
  op_name: str
  computation: str
  root: bool = False  # its computation's result


def _split_call(rest: str) -> tuple[str, str]:
  """'a, b), attr=...' -> ('a, b', 'attr=...'): the operand list up to its closing parenthesis."""
  depth = 1
  for i, ch in enumerate(rest):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      return rest[:i], rest[i + 1:]
  return rest, ""


def parse_hlo(text: str) -> dict[str, Instr]:
  """{name: Instr} of every instruction of an HLO module's text."""
  instrs, computation = {}, ""
  for line in text.splitlines():
    head = _COMPUTATION.match(line)
    if head:
      computation = head.group("name")
      continue
    m = _LINE.match(line)
    if not m:
      continue
    operands, attrs = _split_call(m.group("rest"))
    op_name = re.search(r'op_name="(jit\([^"]*)"', attrs)  # the compiler's own names ('broadcast.69') say nothing
    instrs[m.group("name")] = Instr(m.group("name"), m.group("type"), m.group("op"),
                                    re.findall(r"%([\w.\-]+)", operands), operands, attrs,
                                    op_name.group(1) if op_name else "", computation, line.lstrip().startswith("ROOT"))
  return instrs


def _carried(instrs: dict[str, Instr], gte: Instr) -> list[str]:
  """What a get-tuple-element of a loop's carry (in its body, or of the while) holds: the body's result and the
  loop's initial value at that index."""
  index = re.search(r"index=(\d+)", gte.attrs)
  source = instrs.get(gte.operands[0]) if gte.operands else None
  if index is None or source is None:
    return []
  k = int(index.group(1))
  if source.op == "while":
    loops = [source]
  elif source.op == "parameter":
    loops = [w for w in instrs.values() if w.op == "while" and f"body=%{source.computation}," in w.attrs + ","]
  else:
    return []
  out = []
  for loop in loops:
    body = re.search(r"body=%([\w.\-]+)", loop.attrs).group(1)
    root = next((i for i in instrs.values() if i.computation == body and i.root), None)
    init = instrs.get(loop.operands[0]) if loop.operands else None
    out += [t.operands[k] for t in (root, init) if t is not None and t.op == "tuple" and k < len(t.operands)]
  return out


def arrays(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
  """(dtype, dims) of each array in an HLO type ('(f32[2,3]{1,0}, u32[], token[])'); tokens left out."""
  return [(m.group("dtype"), tuple(int(d) for d in m.group("dims").split(",") if d))
          for m in _ARRAY.finditer(type_text) if m.group("dtype") in DTYPE_BYTES]


def nbytes(dtype: str, dims: tuple[int, ...]) -> int:
  return DTYPE_BYTES[dtype] * math.prod(dims)


def replica_groups(attrs: str) -> list[list[int]]:
  """The device groups of a collective, in any of HLO's forms: '{{0,1},{2,3}}'; iota '[2,4]<=[4,2]T(1,0)';
  mesh "mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_1'}" (the devices laid over named axes,
  a group along the axes in braces); a collective-permute's source_target_pairs as pairs."""
  m = re.search(r"replica_groups=\{(\{[0-9,]*\}(?:,\{[0-9,]*\})*)?\}", attrs)
  if m:
    return [[int(v) for v in g.split(",") if v] for g in re.findall(r"\{([0-9,]*)\}", m.group(1) or "")]
  m = re.search(r"replica_groups=\[([0-9,]+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?", attrs)
  if m:
    return _iota(m.group(2), m.group(3)).reshape(int(m.group(1).split(",")[0]), -1).tolist()
  m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(\[([0-9,]+)\](?:T\(([0-9,]+)\))?\))? "
                r"\{([^}]*)\}", attrs)
  if m:
    axes = [(a, int(n)) for a, n in re.findall(r"'(\w+)'=(\d+)", m.group(1))]
    sizes = [n for _, n in axes]
    ids = (_iota(m.group(2), m.group(3)) if m.group(2) else np.arange(math.prod(sizes))).reshape(sizes)
    along = [i for i, (a, _) in enumerate(axes) if f"'{a}'" in m.group(4)]
    rest = [i for i in range(len(axes)) if i not in along]
    return ids.transpose(rest + along).reshape(-1, math.prod(sizes[i] for i in along)).tolist()
  m = re.search(r"source_target_pairs=\{(.*?)\}\}", attrs)
  if m:
    return [[int(a), int(b)] for a, b in re.findall(r"\{(\d+),(\d+)", m.group(1) + "}")]
  return []


def _iota(dims: str, perm: str | None) -> np.ndarray:
  """Device ids 0..n-1 laid out as `dims` ('2,4'), transposed by `perm` ('1,0') if given."""
  ids = np.arange(math.prod(int(v) for v in dims.split(","))).reshape([int(v) for v in dims.split(",")])
  return ids.transpose([int(v) for v in perm.split(",")]) if perm else ids


def trip_counts(instrs: dict[str, Instr]) -> dict[str, int]:
  """{computation: times it runs a step}: a while body runs its loop's trip count (the backend's
  known_trip_count, else the bound its condition compares the counter with less the counter's start: 1 once
  XLA peeled a trip off) times its caller's count."""
  loops = []
  for instr in instrs.values():
    if instr.op != "while":
      continue
    body, cond = re.search(r"body=%([\w.\-]+)", instr.attrs), re.search(r"condition=%([\w.\-]+)", instr.attrs)
    known = re.search(r'known_trip_count"?:\{"n":"(\d+)"', instr.attrs)
    trips = int(known.group(1)) if known else (_condition_bound(instrs, cond.group(1) if cond else "")
                                               - _counter_start(instrs, instr))
    loops.append((instr.computation, body.group(1) if body else "", trips))
  counts: dict[str, int] = {}
  for _ in range(len(loops) + 1):  # nested loops: until every body has its caller's count
    for caller, body, trips in loops:
      counts[body] = counts.get(caller, 1) * trips
  return counts


def _counter_start(instrs: dict[str, Instr], loop: Instr) -> int:
  """Where a while loop's counter (the carry's element 0) starts: 0, or 1 once XLA peeled the first trip."""
  carry = instrs.get(loop.operands[0]) if loop.operands else None
  value = instrs.get(carry.operands[0]) if carry is not None and carry.op == "tuple" and carry.operands else None
  while value is not None and value.op in ("copy", "bitcast", "convert") and value.operands:
    value = instrs.get(value.operands[0])
  return int(value.args) if value is not None and value.op == "constant" and value.args.lstrip("-").isdigit() else 0


def _condition_bound(instrs: dict[str, Instr], cond: str) -> int:
  """A while condition's bound: the constant it compares the counter with (1 if none is found)."""
  for instr in instrs.values():
    if instr.computation == cond and instr.op == "constant" and re.match(r"[su]32\[\]", instr.type):
      return int(instr.args)
  return 1


def op_names(instrs: dict[str, Instr], name: str, limit: int = 64) -> list[str]:
  """What a collective carries: its op_name, else (a combiner's concatenation of several) the op_names of the
  nearest ops on each path that made its operand."""
  if instrs[name].op_name:
    return [instrs[name].op_name]
  found, seen, queue = [], set(), collections.deque(instrs[name].operands)
  while queue and len(seen) < limit:
    instr = instrs.get(queue.popleft())
    if instr is None or instr.name in seen:
      continue
    seen.add(instr.name)
    if instr.op_name:
      found.append(instr.op_name)
    elif instr.op == "get-tuple-element":
      queue.extend(_carried(instrs, instr) or instr.operands)
    else:
      queue.extend(instr.operands)
  return sorted(set(found))


def role(names: list[str]) -> str:
  """'backward' (the backward pass made it: a gradient, or an activation's cotangent), 'forward' (the model's
  forward pass: an activation), or 'loss/metrics' (the loss outside the model, the step's own sums)."""
  if any("transpose(" in n for n in names):
    return "backward"
  return "forward" if any("jvp(Decoder)" in n for n in names) else "loss/metrics"


def collectives(text: str, slice_of: list[int]) -> list[dict[str, Any]]:
  """Every collective of a program: kind, result dtype and shape, elements and bytes a device puts in,
  device groups, `crosses_slices` (`slice_of[i]`: the slice of the program's device i), trips a step, what it
  carries (op_names) and its role."""
  instrs = parse_hlo(text)
  trips = trip_counts(instrs)
  out = []
  for instr in instrs.values():
    if instr.op not in COLLECTIVES:
      continue
    result = arrays(instr.type)
    sent = [a for o in instr.operands if o in instrs for a in arrays(instrs[o].type)]  # what a device puts in
    groups = replica_groups(instr.attrs)
    names = op_names(instrs, instr.name)
    out.append(dict(
        name=instr.name, kind=instr.op.removesuffix("-start"), dtype=result[0][0] if result else "",
        shape=list(result[0][1]) if len(result) == 1 else [list(d) for _, d in result],
        elements=sum(math.prod(d) for _, d in sent), bytes=sum(nbytes(t, d) for t, d in sent),
        groups=groups, crosses_slices=any(len({slice_of[i] for i in g}) > 1 for g in groups),
        trips=trips.get(instr.computation, 1), op_names=names, role=role(names)))
  return out


def dcn_transfers(text: str) -> dict[str, dict[str, Any]]:
  """{collective name: the DCN transfer it became} in an optimized multi-slice program: its type, the buffer
  a device sends (tiled layout), trips a step."""
  instrs = parse_hlo(text)
  trips = trip_counts(instrs)
  out = {}
  for instr in instrs.values():
    kind = re.search(r'_xla_megascale_transfer_type="(\w+)"', instr.attrs)
    rendezvous = re.search(r'_xla_host_transfer_rendezvous="([^"]*)_\d+"', instr.attrs)
    if instr.op == "send" and kind and rendezvous:
      dtype, dims = arrays(instr.type)[0]
      out[rendezvous.group(1)] = dict(type=kind.group(1), sent=f"{dtype}{list(dims)}".replace(" ", ""),
                                      sent_bytes=nbytes(dtype, dims), trips=trips.get(instr.computation, 1))
  return out


def parameter_shards(state) -> dict[str, int]:
  """One device's parameter shards (params / their fsdp x tensor shards): elements, and bytes in the
  parameters' dtype (fp32; a gradient the step computes in bf16 crosses in half that)."""
  import jax  # after the environment above is set
  leaves = jax.tree_util.tree_leaves(state.params)
  elements = [math.prod(a.sharding.shard_shape(a.shape)) for a in leaves]
  return {"elements": sum(elements), "bytes": sum(n * np.dtype(a.dtype).itemsize for n, a in zip(elements, leaves))}


def crossing_verdict(found: list[dict[str, Any]], shards: dict[str, int]) -> dict[str, Any]:
  """Whether only data-parallel reductions cross slices: sums (all-reduces) of the backward pass (gradients) and
  of the loss and metrics, no more elements than the parameter shards (+ STEP_SUMS: a backward sum of
  activations, tensor parallelism's, would exceed them); the totals a step and what breaks the rule."""
  crossing = [c for c in found if c["crosses_slices"]]
  per_step = lambda cs, field="bytes": sum(c[field] * c["trips"] for c in cs)
  by_role = collections.defaultdict(list)
  for c in crossing:
    by_role[c["role"] if c["kind"] == "all-reduce" else f"{c['kind']} ({c['role']})"].append(c)
  offenders = [c for c in crossing if c["kind"] != "all-reduce" or c["role"] == "forward"]
  total, total_elements = per_step(crossing), per_step(crossing, "elements")
  return {"crossing_collectives": len(crossing), "crossing_per_step": sum(c["trips"] for c in crossing),
          "crossing_bytes_per_device_per_step": total, "crossing_elements_per_device_per_step": total_elements,
          "parameter_shard_elements_per_device": shards["elements"],
          "parameter_shard_bytes_per_device": shards["bytes"],
          "crossing_over_parameter_shard_elements": round(total_elements / shards["elements"], 4),
          "crossing_by_role": {k: {"per_step": sum(c["trips"] for c in v), "bytes": per_step(v),
                                   "elements": per_step(v, "elements")} for k, v in sorted(by_role.items())},
          "not_data_parallel_reductions": [{k: c[k] for k in ("name", "kind", "dtype", "shape", "bytes", "trips",
                                                              "op_names")} for c in offenders],
          "only_data_parallel_reductions_cross": not offenders and total_elements <= shards["elements"] + STEP_SUMS,
          "inside_slice_collectives": sum(1 for c in found if not c["crosses_slices"])}


def table(found: list[dict[str, Any]]) -> str:
  """One row per collective crossing slices (largest first a step), then the count of those inside a slice."""
  rows = [f"{'kind':<14} {'role':<12} {'shape':<20} {'bytes':>11} {'trips':>5} {'DCN sends':<22} carries"]
  for c in sorted((c for c in found if c["crosses_slices"]), key=lambda c: -c["bytes"] * c["trips"]):
    dcn = c.get("dcn") or {}
    what = "; ".join(n.removeprefix("jit(train_step)/") for n in c["op_names"][:3]) + (
        f" (+{len(c['op_names']) - 3})" if len(c["op_names"]) > 3 else "")
    rows.append(f"{c['kind']:<14} {c['role']:<12} {c['dtype'] + str(c['shape']).replace(' ', ''):<20} "
                f"{c['bytes']:>11,} {c['trips']:>5} {dcn.get('sent', '-'):<22} {what}")
  inside = collections.Counter(c["kind"] for c in found if not c["crosses_slices"])
  rows.append("inside a slice (ICI): " + (", ".join(f"{n} {k}" for k, n in sorted(inside.items())) or "none"))
  return "\n".join(rows)


def analyse(config, target: str, slices: int, hlo_dir: str = "") -> dict[str, Any]:
  """Compiles the config's step for `slices` x `target` and reads its collectives (see the module's doc)."""
  with tempfile.TemporaryDirectory() as tmp:
    dump = Path(hlo_dir or tmp)
    t0 = time.time()
    compiled, mesh, (state, _) = compile_on_target(config, target, slices,
                                                   compiler_options={"xla_dump_to": str(dump), **DUMP_OPTIONS})
    compile_s = time.time() - t0
    before = sorted(dump.glob(f"*{BEFORE_DCN}*.txt"))
    if not before:
      raise RuntimeError(f"libtpu wrote no '{BEFORE_DCN}' module to {dump} (one slice, or another libtpu?)")
    final = compiled.as_text()
    if hlo_dir:
      (dump / "optimized.txt").write_text(final)
    program = before[-1].read_text()
  slice_of = [d.slice_index for d in mesh.devices.flat]
  found = collectives(program, slice_of)
  sent = dcn_transfers(final)
  for c in found:
    c["dcn"] = sent.get(c["name"])
  crossing = {c["name"] for c in found if c["crosses_slices"]}
  return {"target": target, "target_slices": slices, "mesh": dict(mesh.shape), **mesh_slices(mesh),
          "compile_s": round(compile_s, 1), **crossing_verdict(found, parameter_shards(state)),
          "dcn_transfers": len(sent), "dcn_sent_bytes_per_device_per_step": sum(
              t["sent_bytes"] * t["trips"] for t in sent.values()),
          # Both empty when the device ids were mapped to slices right: the compiler's DCN transfers are the
          # collectives found crossing.
          "dcn_transfers_without_a_crossing_collective": sorted(set(sent) - crossing),
          "crossing_collectives_without_a_dcn_transfer": sorted(crossing - set(sent)),
          "collectives": found}


def main(argv: list[str]) -> None:
  del argv
  F = flags.FLAGS
  report = analyse(F.config, F.target, F.target_slices, F.hlo_dir)
  print(table(report["collectives"]))
  for key, v in report["crossing_by_role"].items():
    print(f"  {key}: {v['per_step']} a step, {v['elements']:,} elements, {v['bytes']:,} bytes a device")
  print(f"crossing slices a step: {report['crossing_elements_per_device_per_step']:,} elements, "
        f"{report['crossing_bytes_per_device_per_step']:,} bytes a device "
        f"({report['dcn_sent_bytes_per_device_per_step']:,} sent, in the TPU's tiled layout); a data-parallel "
        f"gradient reduction moves each device's parameter shards: {report['parameter_shard_elements_per_device']:,} "
        f"elements, {report['parameter_shard_bytes_per_device']:,} bytes in fp32 (half for a gradient in bf16)")
  print("only data-parallel reductions cross:", report["only_data_parallel_reductions_cross"],
        json.dumps(report["not_data_parallel_reductions"]))
  print(json.dumps({k: v for k, v in report.items() if k not in ("collectives", "crossing_by_role")}))
  if F.out:
    Path(F.out).write_text(json.dumps(report, indent=1))


def _define_flags() -> None:
  """The command line (defined when run as a script only: importing this module, as the tests do, adds none)."""
  flags.DEFINE_string("target", "v5p-8", "A TPU accelerator type (targets.py): one slice.")
  flags.DEFINE_integer("target_slices", 2, "How many such slices, joined over the data-center network.")
  flags.DEFINE_string("out", "", "Write every collective and the totals here as JSON ('' = none).")
  flags.DEFINE_string("hlo_dir", "", "Keep the two programs' text here ('' = a temporary folder, removed).")
  config_flags.DEFINE_config_file("config", None, "The run's config file, as train.py takes it.", lock_config=True)
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  _define_flags()
  app.run(main)
