"""Where each config fits: `train.py --dry_run --target=...` for configs x targets, one JSON line per compile.

  python bench/fit_table.py --configs=pythia160m_ssa,llama2_7b_ssa --targets=v5p-8,v5p-8x2,h100-8 \
      --set=model.scan_layers=True --gpu_python=/tmp/venv_cuda/bin/python --out=bench/fit_table.jsonl
  python bench/fit_table.py --configs=pythia160m_ssa --targets=h100-1 --sweep=train.global_batch_size=8,16,32
  python bench/fit_table.py --configs=pythia160m_ssa --targets=v5e-16 --fit_microbatches
  python bench/fit_table.py --markdown --out=bench/fit_table.jsonl     # the table of docs/accelerators.md

Each compile runs `train.py` in a fresh process (a target's compiler state and memory go with it) and
appends a line to --out: the dry run's report plus the job (config, target, slices, overrides), the command,
wall seconds and this host's load. A job already in --out is skipped, so an interrupted table resumes.
GPU targets run under --gpu_python (jax's CUDA plugin, `pip install -e '.[cuda]'`, is 5.5 GB: often a separate
virtual environment). --fit_microbatches records each attempt and stops where a microbatch would be smaller than
one row a device. --markdown's table holds per config and target the first attempt that fits (fewest
microbatches), or the last that did not.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ssa_jax.errors import ConfigError
from ssa_jax.train import targets

REPO = Path(__file__).resolve().parents[1]


def job_key(job: dict) -> str:
  """What makes two jobs the same: config, target, slices, overrides and estimate."""
  return json.dumps({**{k: job[k] for k in ("config", "target", "slices", "overrides")},
                     "estimate": job.get("estimate", True)}, sort_keys=True)


def done_jobs(out: Path) -> dict[str, dict]:
  """{job key: record} of the lines already in `out`."""
  lines = out.read_text().splitlines() if out.exists() else []
  return {job_key(r["job"]): r for r in map(json.loads, filter(str.strip, lines))}


def run_job(job: dict, python: str, timeout_s: int) -> dict:
  """One dry run in a fresh process; its report (or the error line) with the job, the command and timings."""
  cmd = [python, "train.py", f"--config=configs/{job['config']}.py", "--dry_run", f"--target={job['target']}",
         f"--target_slices={job['slices']}"] + ([] if job.get("estimate", True) else ["--notarget_estimate"]) + [
             f"--config.{o}" for o in job["overrides"]]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
  load = os.getloadavg()[0]
  t0 = time.time()
  try:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
      record = json.loads(lines[-1])
    else:
      err = [l for l in proc.stderr.strip().splitlines() if l.strip()]
      record = {"error": err[-1] if err else f"exit {proc.returncode}"}
  except subprocess.TimeoutExpired:
    record = {"error": f"timed out after {timeout_s}s"}
  record.update(job=job, command=" ".join(cmd[1:]), wall_s=round(time.time() - t0, 1),
                host=f"{os.cpu_count()}-core CPU, load {load:.1f} at start")
  return record


def markdown(records: list[dict]) -> str:
  """One row per (config, target, slices, overrides other than microbatches): the fitting attempt with the
  fewest microbatches, else the last attempt; SSA's estimated step over its vanilla config's on the same target."""
  groups: dict[tuple, list[dict]] = {}
  for r in records:
    job = r["job"]
    base = [o for o in job["overrides"] if not o.startswith("train.microbatches=")]
    groups.setdefault((job["config"], job["target"], job["slices"], tuple(base)), []).append(r)

  def rank(r: dict) -> tuple:
    # Fitting first, then fewest microbatches, then one with the estimate; among misfits the most microbatches.
    mb = int(r.get("microbatches") or 1)
    return (0, mb, r.get("estimated_step_s") is None) if r.get("fits") else (1, -mb, 0)

  chosen = {key: min(rs, key=rank) for key, rs in groups.items()}
  gib = lambda b: f"{b / 2**30:.1f}" if b else "-"
  rows = ["| config | target | batch x seq | microbatches | GiB / device (HBM) | fits | kernel | est. step s "
          "| est. MFU | SSA / vanilla est. | compile s |", "|" + "---|" * 11]
  for (config, target, slices, base), r in sorted(chosen.items()):
    where = f"{target}{f' x{slices}' if slices > 1 else ''}"
    if "error" in r and "fits" not in r:
      rows.append(f"| `{config}` | {where} | error: {r['error'][:120]} |" + " |" * 8)
      continue
    vanilla_config = config.replace("_ssa_ws", "").replace("_ssa", "")  # 'pythia160m_ssa_ws_ft' -> 'pythia160m_ft'
    vanilla = chosen.get((vanilla_config, target, slices, base), {})
    step, vstep = r.get("estimated_step_s"), vanilla.get("estimated_step_s")
    ratio = f"{step / vstep:.3f}" if step and vstep and vanilla_config != config else ""
    mfu = r.get("estimated_mfu")
    rows.append(
        f"| `{config}`{' ' + ' '.join(base) if base else ''} | {where} "
        f"| {r['global_batch_size']} x {r['seq_len']} | {r.get('microbatches', 1)} "
        f"| {gib(r.get('memory_bytes_per_device'))} ({gib(r.get('hbm_bytes_per_device'))}) "
        f"| {'yes' if r.get('fits') else 'no'} | {r.get('attention_kernel') or '-'} "
        f"| {f'{step:.3f}' if step else '-'} | {f'{mfu:.2f}' if mfu else '-'} | {ratio} "
        f"| {r.get('compile_s') if r.get('compile_s') is not None else '-'} |")
  return "\n".join(rows)


def split_slices(entry: str) -> tuple[str, int]:
  """'v5p-8x2' -> ('v5p-8', 2); 'h100-8' -> ('h100-8', 1)."""
  name, sep, slices = entry.rpartition("x")
  return (name, int(slices)) if sep and slices.isdigit() and "-" in name else (entry, 1)


def main() -> None:
  """Runs the jobs not yet in --out, or prints the table of what it holds."""
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--markdown", action="store_true", help="print the table of what --out holds, and exit")
  p.add_argument("--configs", default="", help="comma-separated names in configs/ (without .py)")
  p.add_argument("--targets", default="", help="comma-separated NAME or NAMExK (K TPU slices)")
  p.add_argument("--set", action="append", default=[], help="a config override for every job, e.g. "
                 "model.scan_layers=True (repeatable)")
  p.add_argument("--sweep", default="", help="FIELD=V1,V2,...: one job per value")
  p.add_argument("--fit_microbatches", action="store_true", help="double train.microbatches until the step fits")
  p.add_argument("--gpu_python", default=sys.executable, help="the Python with jax's CUDA plugin, for GPU targets")
  p.add_argument("--out", default="bench/fit_table.jsonl")
  p.add_argument("--timeout_s", type=int, default=3600)
  p.add_argument("--no_estimate", action="store_true", help="TPU: skip the roofline step estimate (its three "
                 "probe compiles); a job's key includes this, so the same job with the estimate is another line")
  args = p.parse_args()

  out = REPO / args.out  # an absolute --out stays as it is
  if args.markdown:
    print(markdown(list(done_jobs(out).values())))
    return
  if not args.configs or not args.targets:
    p.error("--configs and --targets are required (or --markdown)")
  try:  # every --targets entry checked before the first compile
    entries = [(name, slices, targets.parse_target(name, slices))
               for name, slices in map(split_slices, args.targets.split(","))]
  except ConfigError as e:
    p.error(str(e))
  out.parent.mkdir(parents=True, exist_ok=True)
  field, _, values = args.sweep.partition("=")
  sweep = [[f"{field}={v}"] for v in values.split(",")] if args.sweep else [[]]
  for config, (target, slices, spec), extra in itertools.product(args.configs.split(","), entries, sweep):
    job = dict(config=config, target=target, slices=slices, estimate=not args.no_estimate,
               overrides=list(args.set) + extra)
    while True:  # with --fit_microbatches, again with twice the microbatches until the step fits
      record = done_jobs(out).get(job_key(job))
      if record is None:
        record = run_job(job, args.gpu_python if spec.chip.platform == "gpu" else sys.executable, args.timeout_s)
        with out.open("a") as f:
          f.write(json.dumps(record) + "\n")
      summary = {k: record.get(k) for k in ("fits", "memory_bytes_per_device", "attention_kernel",
                                            "estimated_step_s", "compile_s", "error")}
      print(json.dumps({"job": job, **summary}), flush=True)
      # The next microbatch count: double it while each microbatch keeps a row per device.
      microbatches = 2 * int(record.get("microbatches") or 1)
      if (not args.fit_microbatches or record.get("fits") is not False or "tokens_per_step" not in record
          or microbatches * record["chips"] > record["global_batch_size"]):
        break
      job = dict(job, overrides=list(args.set) + extra + [f"train.microbatches={microbatches}"])


if __name__ == "__main__":
  main()
