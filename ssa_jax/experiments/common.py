"""Shared plumbing for the synthetic studies: flags to config, a scanned training loop, JSON and figure output."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from ssa_jax.runtime import cli_errors


def parse_config(default: ml_collections.ConfigDict, description: str,
                 argv: list[str] | None = None) -> ml_collections.ConfigDict:
  """Exposes every top-level scalar/tuple field of `default` as a `--field` flag and returns the merged config."""
  parser = cli_errors.ArgumentParser(description=description)
  for name, value in default.items():
    if isinstance(value, bool):
      parser.add_argument(f"--{name}", type=lambda s: s.lower() in ("1", "true", "yes"), default=value)
    elif isinstance(value, (tuple, list)):
      kind = type(value[0]) if value else float
      parser.add_argument(f"--{name}", type=kind, nargs="+", default=list(value))
    else:
      parser.add_argument(f"--{name}", type=type(value), default=value)
  args = parser.parse_args(argv)
  config = ml_collections.ConfigDict(default.to_dict())
  for name in default.keys():
    value = getattr(args, name)
    config[name] = tuple(value) if isinstance(default[name], (tuple, list)) else value
  return config


def train(loss_fn: Callable[[Any, jax.Array], jax.Array], params: Any, optimizer: optax.GradientTransformation,
          steps: int, key: jax.Array, *, log_every: int = 0, label: str = "") -> tuple[Any, np.ndarray]:
  """Runs `steps` optimizer steps of loss_fn(params, key_t) in jitted scans; returns params and the loss curve."""
  if steps <= 0:
    raise ValueError(f"steps: expected a positive integer, got {steps}")
  chunk = log_every if 0 < log_every < steps else steps

  def step(carry, key_t):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, key_t)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  @jax.jit
  def run_chunk(carry, keys):
    return jax.lax.scan(step, carry, keys)

  carry = (params, optimizer.init(params))
  keys = jax.random.split(key, steps)
  losses = []
  for start in range(0, steps, chunk):
    carry, chunk_losses = run_chunk(carry, keys[start:start + chunk])
    losses.append(np.asarray(chunk_losses))
    if log_every:
      print(f"  {label} step {min(start + chunk, steps):6d}/{steps}  loss {float(chunk_losses[-1]):.4f}", flush=True)
  return carry[0], np.concatenate(losses)


def mean_std(values: list[float]) -> dict[str, float]:
  """{'mean', 'std'} (population std, as numpy's default) of a metric over seeds."""
  return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def run_variants(variants: list, seeds: Sequence[int], run_one: Callable[[Any, int], dict],
                 metrics: Sequence[str]) -> dict:
  """Every variant (methods_adapter.StudyVariant) x seed through run_one(variant, seed); the runs and, per variant,
  each metric's mean / std over seeds."""
  runs = []
  for seed in seeds:
    for variant in variants:
      runs.append({**run_one(variant, seed), "variant": variant.name, "seed": seed})
      print(f"seed {seed} {variant.name:16s} " + "  ".join(f"{m} {runs[-1][m]:.4f}" for m in metrics), flush=True)
  summary = {v.name: {m: mean_std([r[m] for r in runs if r["variant"] == v.name]) for m in metrics}
             for v in variants}
  return {"runs": runs, "summary": summary}


def print_variants(payload: dict, metrics: Sequence[str]) -> None:
  """Prints each variant's metrics, mean +- std over seeds."""
  print("\nvariant           " + "  ".join(f"{m:>22s}" for m in metrics))
  for name, row in payload["summary"].items():
    print(f"{name:16s}  " + "  ".join(f"{row[m]['mean']:13.4f}+-{row[m]['std']:.4f}" for m in metrics))


def write_json(path: Path, payload: dict) -> None:
  """Writes `payload` as indented JSON (numpy scalars/arrays converted)."""
  path.write_text(json.dumps(payload, indent=2, default=lambda obj: obj.tolist()) + "\n")


def pyplot():
  """matplotlib.pyplot on the file-only Agg backend (figures are written, never shown)."""
  # Here, not at the top: pyplot picks its backend when first imported, so Agg must be chosen before it.
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  return plt


def run_study(argv: list[str] | None, default: ml_collections.ConfigDict, description: str,
              run: Callable[[ml_collections.ConfigDict], dict], print_table: Callable[[dict], None], name: str,
              plot: Callable[[Path, dict], None] | None = None, figure: str = "") -> dict:
  """A study's command: flags -> config, run, its table, OUT_DIR/<name>.json and (with `plot`) OUT_DIR/<figure>."""
  config = parse_config(default, description, argv)
  out = Path(config.out_dir)
  out.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  dev = jax.devices()[0]
  device = {"platform": dev.platform, "device_kind": dev.device_kind, "cpu_count": os.cpu_count()}
  payload = {"config": config.to_dict(), "device": device, **run(config), "seconds": time.perf_counter() - start}
  print_table(payload)
  written = [out / f"{name}.json"]
  write_json(written[0], payload)
  if plot is not None and not config.get("variants"):  # the figures show the paper's own models
    written.append(out / figure)
    plot(written[-1], payload)
  print(f"wrote {' and '.join(map(str, written))} ({payload['seconds']:.1f}s)")
  return payload
