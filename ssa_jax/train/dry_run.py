"""`train.py --dry_run`: a config's whole start without data or parameters.

Validates the config (as a real run does, except checks that need files a dry run does not require: these
are listed under "unchecked"), builds the abstract train state with its shardings on the configured mesh,
and lowers the jitted train step on abstract inputs (jax.ShapeDtypeStruct with shardings: nothing is
allocated, no corpus is read), then compiles it and reads the executable's memory analysis.

Data: the corpus is never opened, and a config.data.path that does not exist here is listed, not fatal.
The tokenizer's vocab size is compared with the model's when config.data.tokenizer_path names a file that
exists (it is loaded) or is '' (the demo BPE, by config.data.demo_vocab_size, without training it); a named
file that is absent is listed under "unchecked". A fine-tune config without config.init.hf_dir is listed
too (a real run refuses it); one with an hf_dir that exists is compared with its config.json.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ssa_jax import sharding
from ssa_jax.model import Decoder, count_params, is_temperature_param, param_shapes
from ssa_jax.train import metrics as metrics_lib
from ssa_jax.train.loop import flops_per_token
from ssa_jax.train.optim import learning_rate_schedule, make_optimizer
from ssa_jax.train.preflight import describe_ssa, prepare
from ssa_jax.train.state import state_shardings
from ssa_jax.train.step import jit_train_step

STAGES = ("lower", "compile")


def abstract_inputs(abstract_state, state_shardings_, batch_shape: tuple[int, int], mesh):
  """(state, batch) as ShapeDtypeStructs carrying the shardings the train step is jitted with."""
  state = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                 abstract_state, state_shardings_)
  batch = {"tokens": jax.ShapeDtypeStruct(batch_shape, jnp.int32, sharding=sharding.batch_sharding(mesh))}
  return state, batch


def _memory(compiled) -> dict[str, Any]:
  """Bytes per device from the executable's memory analysis (None where the backend gives none)."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return {"memory_bytes_per_device": None}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")
  sizes = {f: int(getattr(analysis, f, 0) or 0) for f in fields}
  # Live at the peak: inputs, outputs not aliased to (donated) inputs, and temporaries.
  total = (sizes["argument_size_in_bytes"] + sizes["output_size_in_bytes"] - sizes["alias_size_in_bytes"]
           + sizes["temp_size_in_bytes"])
  return {"memory_bytes_per_device": total, "memory_analysis": sizes}


def dry_run(config: ml_collections.ConfigDict, stage: str = "compile") -> dict[str, Any]:
  """Runs the checks and the `stage` ('lower' or 'compile'); returns the report printed as JSON."""
  if stage not in STAGES:
    raise ValueError(f"stage: expected one of {STAGES}, got {stage!r}")
  run = prepare(config, None, dry_run=True)
  t, mesh, cfg = run.config.train, run.mesh, run.model_cfg
  shapes = param_shapes(cfg)
  tx = make_optimizer(t, shapes)
  abstract, shardings = state_shardings(cfg, tx, mesh, run.rules, shapes)
  state_in, batch_in = abstract_inputs(abstract, shardings, (t.global_batch_size, t.seq_len + 1), mesh)
  step_fn = jit_train_step(Decoder(cfg), tx, learning_rate_schedule(t), t.microbatches, shardings, mesh,
                           int(t.loss_chunk_size))

  t0 = time.time()
  lowered = step_fn.lower(state_in, batch_in)
  lower_s = time.time() - t0
  compile_s, memory = None, {"memory_bytes_per_device": None}
  if stage == "compile":
    t0 = time.time()
    compiled = lowered.compile()
    compile_s = time.time() - t0
    memory = _memory(compiled)

  tokens_per_step = t.global_batch_size * t.seq_len
  report = {
      "config_ok": True,
      "mode": run.config.get("mode"),
      "family": cfg.family,
      "ssa": describe_ssa(cfg.ssa),
      "params": count_params(shapes),
      "ssa_params": count_params(shapes, is_temperature_param),
      "mesh": dict(mesh.shape),
      "devices": f"{mesh.size} x {jax.devices()[0].device_kind}",
      "tokens_per_step": tokens_per_step,
      # Model FLOPs of one step (6 x weights + causal attention, SSA's temperature matmuls included).
      "flops_per_step": flops_per_token(cfg, t.seq_len) * tokens_per_step,
      "ssa_flops_per_step": metrics_lib.ssa_flops_per_token(cfg, t.seq_len) * tokens_per_step,
      "stage": stage,
      "lower_s": round(lower_s, 3),
      "compile_s": None if compile_s is None else round(compile_s, 3),
      **memory,
      "tokenizer_checked": run.tokenizer_checked,  # its vocab size against the model's (see unchecked if not)
      "unchecked": run.unchecked,
  }
  return report
