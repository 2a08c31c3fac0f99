"""What the comparison measures on each final checkpoint: parameters, Figure 2, temperatures, zero-shot tasks.

All of it on the run's own validation split (the first `num_tokens` tokens, in the windows its validation
reads: ssa_jax.analysis.norms.validation_windows), so that every run of a comparison is analysed on the same tokens. The result is cached in
RUN_DIR/compare_analysis.json, keyed by the checkpoint step and the settings, so a re-run reuses it.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ssa_jax.analysis import norms
from ssa_jax.data.tokenizer import load_tokenizer
from ssa_jax.evaluate import ModelSource, load_model, run_eval
from ssa_jax.formats import checkpoint
from ssa_jax.model.params import param_counts, unstack_layers

CACHE = "compare_analysis.json"
EVAL_RESULTS = "compare_eval.json"
PERCENTILES = (5, 95)


@functools.lru_cache(maxsize=8)
def _sown_taus(model):
  """A jitted (variables, tokens_BT) -> {tau_*: (B, T, layers, heads)}, one per model (a variant's seeds share it)."""

  @jax.jit
  def taus(variables, tokens_BT):
    _, state = model.apply(variables, tokens_BT, mutable=["intermediates"])
    # Vanilla sows nothing; scan_layers sows one stacked tau per module.
    inter = unstack_layers(state.get("intermediates", {}), model.config.num_layers)
    attn = [inter.get(f"layers_{i}", {}).get("attn", {}) for i in range(model.config.num_layers)]
    return {k: jnp.stack([a[k][0] for a in attn], 2) for k in attn[0] if k.startswith("tau_")}

  return taus


def temperature_stats(model, variables, windows_NT: np.ndarray, batch_size: int = 8) -> dict[str, dict[str, list]]:
  """Per sown temperature (tau_q, tau_v, ...): per-layer mean, std and 5th / 95th percentiles over tokens x heads."""
  cfg = model.config
  taus = _sown_taus(model)
  parts = [jax.device_get(taus(variables, jnp.asarray(windows_NT[i:i + batch_size])))
           for i in range(0, len(windows_NT), batch_size)]
  out = {}
  for name in parts[0] if parts else ():
    a_XLH = np.concatenate([p[name] for p in parts]).astype(np.float64)
    a_XLH = a_XLH.reshape(-1, *a_XLH.shape[2:])  # (tokens, layers, heads)
    per_layer = np.moveaxis(a_XLH, 1, 0).reshape(cfg.num_layers, -1)
    out[name] = {"mean": per_layer.mean(1).tolist(), "std": per_layer.std(1).tolist(),
                 **{f"p{q}": np.percentile(per_layer, q, axis=1).tolist() for q in PERCENTILES}}
  return out


def figure2(model, variables: dict, windows_NT: np.ndarray) -> dict[str, Any]:
  """ssa_jax.analysis.norms on the windows: means of spec_raw / spec_eff / opnorm(_eff) / tau_q / spikiness,
  per-layer means, and the per-token values (for the violins)."""
  analysed = type(model)(norms.analysis_config(model.config))
  seq_len = windows_NT.shape[1]
  arrays = norms.analyse(analysed, variables, windows_NT.reshape(-1).tolist(), seq_len)
  return norms.summarise(arrays)


def zero_shot(model, variables: dict, tokenizer_path: str, run_dir: Path, step: int, seq_len: int, tasks: str,
              data_dir: str, limit: int, batch_size: int) -> dict[str, Any]:
  """ssa_jax.evaluate.run_eval on the final checkpoint: {task: {metric: value}} and the tasks that could not run."""
  results = run_eval(model, variables, tokenizer_path, tasks=tasks, data_dir=data_dir or None, limit=limit or None,
                     batch_size=batch_size, max_length=seq_len, output=str(run_dir / EVAL_RESULTS),
                     extra={"checkpoint": str(run_dir / "checkpoints"), "step": step}, show_progress=False)
  scores = {task: {k.split(",")[0]: v for k, v in entry.items()
                   if "," in k and "_stderr" not in k and isinstance(v, (int, float))}
            for task, entry in results["results"].items()}
  return {"scores": scores, "missing": results.get("ssa_jax", {}).get("missing_tasks", {}),
          "results_file": str(run_dir / EVAL_RESULTS)}


def analyse_run(run_dir: Path, num_tokens: int, eval_tasks: str = "", eval_data_dir: str = "", limit: int = 0,
                eval_batch_size: int = 16) -> dict[str, Any]:
  """Everything measured on RUN_DIR's latest checkpoint (cached in RUN_DIR/compare_analysis.json)."""
  if num_tokens <= 0:
    raise ValueError(f"--analysis_tokens: expected a positive int, got {num_tokens}")
  _, step = checkpoint.resolve_step_dir(run_dir)
  key = {"step": step, "num_tokens": num_tokens, "eval_tasks": eval_tasks, "eval_data_dir": eval_data_dir,
         "limit": limit}
  cache = run_dir / CACHE
  if cache.is_file():
    cached = json.loads(cache.read_text())
    if cached.get("key") == key:
      return cached
  print(f"[compare] analysing {run_dir.name} (step {step})", flush=True)
  start = time.time()
  model, variables, tokenizer_path = load_model(ModelSource(checkpoint=str(run_dir)))
  run_config = checkpoint.read_config(run_dir)
  if not tokenizer_path:
    raise ValueError(f"{run_dir}: the run's config names no tokenizer (config.data.tokenizer_path)")
  tokenizer = load_tokenizer(tokenizer_path)
  windows_NT = norms.validation_windows(run_config, tokenizer, num_tokens)
  out: dict[str, Any] = {
      "key": key, "step": step, "tokens_analysed": int(windows_NT.size), "window": int(windows_NT.shape[1]),
      **param_counts(model.config),
      "temperatures": temperature_stats(model, variables, windows_NT),
      "figure2": figure2(model, variables, windows_NT),
      "zero_shot": None,
  }
  if eval_tasks:
    out["zero_shot"] = zero_shot(model, variables, tokenizer_path, run_dir, step, int(run_config["train"]["seq_len"]),
                                 eval_tasks, eval_data_dir, limit, eval_batch_size)
  cache.write_text(json.dumps(out) + "\n")
  print(f"[compare] {run_dir.name}: analysed in {time.time() - start:.1f} s", flush=True)
  return out
