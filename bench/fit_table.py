"""Where each config fits: `train.py --dry_run --target=...` for configs x targets, one JSON line per compile.

  python bench/fit_table.py --configs=pythia160m_ssa,llama2_7b_ssa --targets=v5p-8,v5p-8x2,h100-8 \
      --set=model.scan_layers=True --gpu_python=/tmp/venv_cuda/bin/python --out=bench/fit_table.jsonl
  python bench/fit_table.py --configs=pythia160m_ssa --targets=h100-1 --sweep=train.global_batch_size=8,16,32
  python bench/fit_table.py --configs=pythia160m_ssa --targets=v5e-16 --fit_microbatches

Each compile runs `train.py` in a fresh process (a target's compiler state and memory go with it) and
appends a line to --out: the dry run's report plus the job (config, target, slices, overrides), the command,
wall seconds and this host's load. A job already in --out is skipped, so an interrupted table resumes.
`--targets` entries NAME or NAMExK (K slices). GPU targets run under --gpu_python (a Python with jax's CUDA
plugin, `pip install -e '.[cuda]'`; 5.5 GB, so often a separate virtual environment). `--fit_microbatches`
doubles config.train.microbatches from the config's value until the step fits (or a microbatch would be
smaller than one row a device), recording each attempt. `--set` overrides apply to every job; `--sweep` gives
one job per value.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPU_PREFIXES = ("h100", "h200", "a100")


def job_key(job: dict) -> str:
  return json.dumps({k: job[k] for k in ("config", "target", "slices", "overrides")}, sort_keys=True)


def done_jobs(out: Path) -> dict[str, dict]:
  """{job key: record} of the lines already in `out`."""
  if not out.exists():
    return {}
  records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
  return {job_key(r["job"]): r for r in records}


def run_job(job: dict, python: str, timeout_s: int) -> dict:
  """One dry run in a fresh process; its report (or the error line) with the job, the command and timings."""
  cmd = [python, "train.py", f"--config=configs/{job['config']}.py", "--dry_run", f"--target={job['target']}",
         f"--target_slices={job['slices']}"] + [f"--config.{o}" for o in job["overrides"]]
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


def parse_target(entry: str) -> tuple[str, int]:
  """'v5p-8x2' -> ('v5p-8', 2); 'h100-8' -> ('h100-8', 1)."""
  name, sep, slices = entry.rpartition("x")
  return (name, int(slices)) if sep and slices.isdigit() and "-" in name else (entry, 1)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--configs", required=True, help="comma-separated names in configs/ (without .py)")
  p.add_argument("--targets", required=True, help="comma-separated NAME or NAMExK (K TPU slices)")
  p.add_argument("--set", action="append", default=[], help="a config override for every job, e.g. "
                 "model.scan_layers=True (repeatable)")
  p.add_argument("--sweep", default="", help="FIELD=V1,V2,...: one job per value")
  p.add_argument("--fit_microbatches", action="store_true", help="double train.microbatches until the step fits")
  p.add_argument("--gpu_python", default=sys.executable, help="the Python with jax's CUDA plugin, for GPU targets")
  p.add_argument("--out", default="bench/fit_table.jsonl")
  p.add_argument("--timeout_s", type=int, default=3600)
  args = p.parse_args()

  out = REPO / args.out if not Path(args.out).is_absolute() else Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  sweep = [[]]
  if args.sweep:
    field, _, values = args.sweep.partition("=")
    sweep = [[f"{field}={v}"] for v in values.split(",")]
  for config in args.configs.split(","):
    for entry in args.targets.split(","):
      target, slices = parse_target(entry)
      python = args.gpu_python if target.startswith(GPU_PREFIXES) else sys.executable
      for extra in sweep:
        overrides = list(args.set) + extra
        microbatches = None
        while True:
          job = dict(config=config, target=target, slices=slices,
                     overrides=overrides + ([f"train.microbatches={microbatches}"] if microbatches else []))
          record = done_jobs(out).get(job_key(job))
          if record is None:
            record = run_job(job, python, args.timeout_s)
            with out.open("a") as f:
              f.write(json.dumps(record) + "\n")
          summary = {k: record.get(k) for k in ("fits", "memory_bytes_per_device", "attention_kernel",
                                                "estimated_step_s", "compile_s", "error")}
          print(json.dumps({"job": job, **summary}), flush=True)
          if not args.fit_microbatches or record.get("fits") is not False:
            break
          # The next microbatch count: double it while each microbatch keeps a row per device.
          m = 2 * int(record.get("microbatches") or 1)
          if "tokens_per_step" not in record or m * record["chips"] > record["global_batch_size"]:
            break
          microbatches = m


if __name__ == "__main__":
  main()
