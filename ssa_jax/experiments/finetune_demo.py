"""The paper's fine-tune (Appendix A) in miniature, one command on the offline demo:

  python -m ssa_jax.experiments.finetune_demo --workdir=runs/finetune_demo [--pretrain_steps=200] \
      [--variants=vanilla,ssa,ssa_ws] [--seeds=0,1,2] [--finetune_batch=8]

1. pretrain: configs/tiny.py (vanilla) for --pretrain_steps on the demo corpus  -> WORKDIR/pretrain
2. export:   `python -m ssa_jax.formats.hf export WORKDIR/pretrain WORKDIR/hf`           -> WORKDIR/hf
3. fine-tune: configs/tiny_ft.py (the _ft settings scaled to the demo) from WORKDIR/hf as every variant x seed
   (seed s initialises SSA's new parameters; every run reads the same batches, so the spread over seeds is
   that of SSA's initialisation alone: none for vanilla, none for weight sharing, whose w starts at 0 and alpha
   at a constant; the comparison with vanilla is pair by pair)                 -> WORKDIR/finetune/<variant>_seed<s>
4. held-out perplexity on the demo's test split (all of it): the pretrained model, every fine-tune at step 0
   (SSA added near identity) and at its end -> WORKDIR/finetune_demo.json, finetune_demo.md, and the console.

Each training stage is `ssa_jax.train.loop.train` through ssa_jax.experiments.compare.cli.ensure_trained, so an
interrupted command continues where it stopped and a complete stage is not trained again.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from configs import tiny, tiny_ft
from ssa_jax.errors import ConfigError
from ssa_jax.experiments.compare.cli import ensure_trained, parse_list, variant_config
from ssa_jax.experiments.finetune_drift import heldout_loss, split_batches
from ssa_jax.formats import checkpoint, hf
from ssa_jax.runtime import cli_errors
from ssa_jax.train.workdir_lock import WorkdirLockedError


def pretrain_config(steps: int, cache_dir: str = ""):
  """configs/tiny.py for `steps` steps, validated at its end, no end-of-run evaluation."""
  config = tiny.get_config()
  if cache_dir:
    config.data.cache_dir = cache_dir
  config.train.update(dict(steps=steps, eval_every=steps, checkpoint_every=steps, warmup_steps=min(30, steps // 10)))
  config.eval.update(dict(at_end=False, passkey=False))
  return config


def export(pretrain_dir: Path, hf_dir: Path) -> None:
  """The pretrained checkpoint as a Hugging Face directory (once), through the documented CLI's code."""
  if (hf_dir / "config.json").is_file():
    print(f"[finetune_demo] {hf_dir}: exported already", flush=True)
    return
  if hf.main(["export", str(pretrain_dir), str(hf_dir)]) != 0:
    raise ConfigError(f"export of {pretrain_dir} to {hf_dir} failed (see the error line above)")


def mean_std(values: list[float]) -> dict[str, float]:
  """{'mean', 'std' (sample, ddof 1; 0 for one value), 'n'}."""
  a = np.asarray(values, np.float64)
  return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": int(len(a))}


def summary(rows: list[dict[str, Any]], variants: list[str]) -> dict[str, dict[str, dict[str, float]]]:
  """Per variant, mean +- std over seeds of: before, after, after - before, and after minus vanilla's after
  with the same seed (the same data order; when 'vanilla' is among the variants)."""
  by = {(r["variant"], r["seed"]): r for r in rows}
  out = {}
  for v in variants:
    mine = [r for r in rows if r["variant"] == v]
    out[v] = {"before": mean_std([r["before_ppl"] for r in mine]), "after": mean_std([r["after_ppl"] for r in mine]),
              "change": mean_std([r["after_ppl"] - r["before_ppl"] for r in mine])}
    paired = [r["after_ppl"] - by[("vanilla", r["seed"])]["after_ppl"] for r in mine if ("vanilla", r["seed"]) in by]
    if paired and v != "vanilla":
      out[v]["vs_vanilla"] = mean_std(paired)
  return out


def table(stats: dict[str, dict[str, dict[str, float]]], pretrained_ppl: float) -> str:
  """The markdown table of `summary`: test perplexity, mean +- std over seeds."""
  fmt = lambda s, sign="": f"{s['mean']:{sign}.3f} +- {s['std']:.3f}"  # noqa: E731
  lines = [f"Pretrained vanilla model: test perplexity {pretrained_ppl:.3f}", "",
           "| variant | seeds | before (step 0) | after | after - before | after - vanilla's after (same seed) |",
           "|---|---|---|---|---|---|"]
  for v, s in stats.items():
    paired = fmt(s["vs_vanilla"], "+") if "vs_vanilla" in s else "-"
    lines.append(f"| {v} | {s['before']['n']} | {fmt(s['before'])} | {fmt(s['after'])} | {fmt(s['change'], '+')} | "
                 f"{paired} |")
  return "\n".join(lines) + "\n"


def run(workdir: str, pretrain_steps: int, variants: list[str], seeds: list[int], finetune_batch: int = 0,
        cache_dir: str = "") -> dict | None:
  """The four stages above; returns the report (also written to WORKDIR), or None when a stage was stopped.
  `cache_dir`: where the demo corpus and BPE are built ('' = config.data.cache_dir's default)."""
  root = Path(workdir)
  t0 = time.time()
  state = ensure_trained(root / "pretrain", pretrain_config(pretrain_steps, cache_dir), "vanilla", 0)
  if not state["complete"]:
    return None
  export(root / "pretrain", root / "hf")
  timing = {"pretrain_export_s": round(time.time() - t0, 1)}

  base = tiny_ft.get_config()
  base.init.hf_dir = str((root / "hf").absolute())
  if cache_dir:
    base.data.cache_dir = cache_dir
  if finetune_batch:
    base.train.global_batch_size = finetune_batch
  finetune_batch = base.train.global_batch_size
  vanilla_model, vanilla_variables = hf.from_hf(root / "hf")
  run_config = checkpoint.read_config(root / "pretrain")
  test_NBT1 = split_batches(run_config, base.eval.heldout_split, base.train.seq_len, finetune_batch, None)
  pretrained_ppl = float(np.exp(heldout_loss(vanilla_model, vanilla_variables, test_NBT1)))
  print(f"[finetune_demo] pretrained: test ppl {pretrained_ppl:.3f} over {test_NBT1.shape[0]} batches of "
        f"{finetune_batch} x {base.train.seq_len}", flush=True)

  t1 = time.time()
  rows = []
  for seed in seeds:
    for variant in variants:
      config = variant_config(base, variant, seed)
      run_dir = root / "finetune" / f"{variant}_seed{seed}"
      state = ensure_trained(run_dir, config, variant, seed)
      if not state["complete"]:
        return None
      model, variables, _ = checkpoint.load_model(run_dir)
      start = vanilla_variables
      if model.config.ssa.enabled:  # step 0 of the fine-tune: SSA added near identity, as the loop does it
        start = hf.from_hf(root / "hf", ssa=model.config.ssa, rng_seed=seed)[1]
      row = {"variant": variant, "seed": seed,
             "before_ppl": float(np.exp(heldout_loss(model, start, test_NBT1))),
             "after_ppl": float(np.exp(heldout_loss(model, jax.device_get(variables), test_NBT1))),
             "wall_s": round(state["sessions"][-1]["wall_s"], 1) if state["sessions"] else None}
      rows.append(row)
      print(f"[finetune_demo] {run_dir.name}: test ppl {row['before_ppl']:.3f} -> {row['after_ppl']:.3f}", flush=True)
  timing["finetune_s"] = round(time.time() - t1, 1)
  stats = summary(rows, variants)
  md = table(stats, pretrained_ppl)
  report = {"pretrained_ppl": pretrained_ppl, "rows": rows, "summary": stats, "timing": timing,
            "test_tokens": int(test_NBT1.shape[0] * test_NBT1.shape[1] * (test_NBT1.shape[2] - 1)),
            "finetune_config": json.loads(base.to_json_best_effort())}
  (root / "finetune_demo.json").write_text(json.dumps(report, indent=1) + "\n")
  (root / "finetune_demo.md").write_text(md)
  print(md, flush=True)
  print(f"[finetune_demo] wrote {root / 'finetune_demo.md'} and .json ({timing})", flush=True)
  return report


def main(argv: list[str]) -> int:
  """The command line (see the module docstring); 130 when a stage was stopped (Ctrl-C saves a checkpoint)."""
  p = cli_errors.ArgumentParser(prog="python -m ssa_jax.experiments.finetune_demo", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="runs/finetune_demo")
  p.add_argument("--pretrain_steps", type=int, default=200, help="steps of configs/tiny.py (its full run: 600)")
  p.add_argument("--variants", default="vanilla,ssa,ssa_ws")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--finetune_batch", type=int, default=0,
                 help="sequences per fine-tune step (of 128 tokens); 0 = configs/tiny_ft.py's (8)")
  args = p.parse_args(argv)
  if args.pretrain_steps <= 0 or args.finetune_batch < 0:
    raise ConfigError("--pretrain_steps / --finetune_batch: expected a positive integer / an integer >= 0")
  report = run(args.workdir, args.pretrain_steps, parse_list(args.variants, "variants"),
               parse_list(args.seeds, "seeds", int), args.finetune_batch)
  if report is None:
    print("[finetune_demo] stopped; run the same command again to continue", file=sys.stderr, flush=True)
    return cli_errors.INTERRUPTED_EXIT_CODE
  return 0


if __name__ == "__main__":
  cli_errors.run_argv(main, user_errors=(*cli_errors.PATH_AND_VALUE_ERRORS, WorkdirLockedError))
