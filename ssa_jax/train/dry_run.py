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

--target=NAME (ssa_jax/train/targets.py): the same step compiled for an accelerator this host does not have,
by that accelerator's own compiler (libtpu for TPU slices, jax's CUDA plugin for GPU hosts), with the config's
mesh laid over its devices; the memory is then the target compiler's, and the step traced under that mesh
picks the target's attention kernel ('auto': splash on TPU, cuDNN for bf16 on GPU). A TPU target also gives
the compiler's roofline estimate of the step time (see `estimate`), a lower bound, not a measurement.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ssa_jax.errors import ConfigError
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.params import param_shapes, ssa_param_counts
from ssa_jax.model.splash import LANES, fit_block
from ssa_jax.runtime import sharding
from ssa_jax.train import compiled as compiled_lib, metrics as metrics_lib, targets as targets_lib
from ssa_jax.train.loop import flops_per_token
from ssa_jax.train.optim import learning_rate_schedule, make_optimizer
from ssa_jax.train.preflight import describe_ssa, prepare
from ssa_jax.train.state import state_shardings
from ssa_jax.train.step import jit_train_step


STAGES = ("lower", "compile")
# Matmuls of one splash kernel call, each 2 x T x T x D FLOPs a (row, head) over the causal blocks:
# fwd q k^T and p v; dq q k^T, dp, dq; dkv q k^T, dp, dv, dk (and dq too when the backward is fused).
SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}
ESTIMATE_NOTE = ("estimate: the TPU compiler's roofline (per instruction max(FLOPs / peak, bytes / HBM bandwidth), "
                 "summed, no overlap, no interconnect time), splash's FLOPs added at peak; a lower bound on the "
                 "step time, for ranking variants of a step, not a measurement")


def abstract_inputs(abstract_state, state_shardings_, batch_shape: tuple[int, int], mesh):
  """(state, batch) as ShapeDtypeStructs carrying the shardings the train step is jitted with."""
  state = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                 abstract_state, state_shardings_)
  batch = {"tokens": jax.ShapeDtypeStruct(batch_shape, jnp.int32, sharding=sharding.batch_sharding(mesh))}
  return state, batch


def _step_program(cfg: ModelConfig, t, mesh, rules, microbatches: int, loss_chunk_size: int, rows: int):
  """(parameter shapes, the jitted train step, its abstract (state, batch)) for `rows` windows a step."""
  shapes = param_shapes(cfg)
  tx = make_optimizer(t, shapes)
  abstract, shardings = state_shardings(cfg, tx, mesh, rules, shapes)
  args = abstract_inputs(abstract, shardings, (rows, t.seq_len + 1), mesh)
  step_fn = jit_train_step(Decoder(cfg), tx, learning_rate_schedule(t), microbatches, shardings, mesh,
                           loss_chunk_size)
  return shapes, step_fn, args


def _lower(step_fn, args, mesh):
  """The step lowered under its mesh: the attention kernel (and splash's shard_map) follow the mesh's platform."""
  with jax.set_mesh(mesh):
    return step_fn.lower(*args)


def _on_one_host_device(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with a one-device mesh, for the checks this host runs; the target's mesh is built apart."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.mesh.update(dict(data=1, fsdp=1, tensor=1, num_devices=1))
  return config


def _check_target_batch(t, mesh, target: targets_lib.Target, hosts: int) -> None:
  """The global batch splits over the target's data axes (and microbatches) and over its hosts."""
  sharding.check_batch_divisible(t.global_batch_size, mesh, t.microbatches)
  if t.global_batch_size % hosts:
    raise ConfigError(f"config.train.global_batch_size: {t.global_batch_size} is not divisible by the {hosts} "
                      f"hosts of {target.name}" + (f" x {target.slices}" if target.slices > 1 else ""))


def estimate(cfg: ModelConfig, t, mesh, rules, peak_flops: float | None, slices: int = 1) -> dict[str, Any]:
  """The TPU compiler's roofline of one step: {'estimated_step_s', 'roofline_flops_per_device', ...}.

  The cost model counts a loop's body once (scanned layers, microbatches, loss chunks), so the figure is read
  off loop-free probes of the same step: one microbatch (microbatches=1, its rows) with 1 and 2 unscanned
  layers (a layer's cost is their difference) and, when the loss has several chunks, 1 layer with chunks
  twice as long (a chunk's cost); then cost = M x (one layer + (L - 1) x layer + (chunks - 1) x chunk), M
  microbatches (the optimizer update is thus counted M times: a small excess). The splash kernels, which the
  cost model gives no cost, are added as their causal-block FLOPs at the chip's peak.
  `slices` K > 1: `mesh` is one slice's, which computes 1 / K of the batch (the slices are data parallel; the
  DCN all-reduce of the gradients is not modelled, like all interconnect time, and the cost model gives DCN
  transfers no usable cost).
  """
  L, M, T = cfg.num_layers, int(t.microbatches), int(t.seq_len)
  rows, chunk = t.global_batch_size // (M * slices), int(t.loss_chunk_size)
  chunks = 1 if chunk == 0 or chunk >= T else -(-T // chunk)
  t0 = time.time()

  def probe(layers: int, chunk_size: int):
    probe_cfg = dataclasses.replace(cfg, num_layers=layers, scan_layers=False)
    _, step_fn, args = _step_program(probe_cfg, t, mesh, rules, 1, chunk_size, rows)
    compiled = _lower(step_fn, args, mesh).compile()
    return compiled_lib.roofline(compiled), compiled_lib.splash_calls(compiled.as_text())

  one, calls = probe(1, chunk)
  if one is None:
    return {"estimated_step_s": None, "estimate": "none: the compiler gave no cost analysis"}
  two = probe(2, chunk)[0] if L > 1 else one
  wide = probe(1, 2 * chunk)[0] if chunks > 1 else one
  total = {k: M * (one[k] + (L - 1) * (two[k] - one[k]) + (chunks - 1) * (wide[k] - one[k])) for k in one}
  # Splash: per device, its rows x heads of each call; causal blocks on and below the diagonal are computed.
  Tp = -(-T // LANES) * LANES
  blocks = Tp // fit_block(cfg.splash_block_q, Tp)
  matmul_flops = (2.0 * Tp * Tp * cfg.head_dim * (blocks + 1) / (2 * blocks)
                  * rows * cfg.num_heads / mesh.size)
  fused = calls["dkv"] and not calls["dq"]
  matmuls = sum(n * (SPLASH_MATMULS[p] + (1 if fused and p == "dkv" else 0)) for p, n in calls.items())
  splash_flops = M * L * matmuls * matmul_flops
  out = {"estimate_probes_compile_s": round(time.time() - t0, 3),
         "roofline_flops_per_device": total["flops"] + splash_flops,
         "roofline_bytes_per_device": total["bytes_accessed"]}
  if min(one["optimal_seconds"], two["optimal_seconds"], wide["optimal_seconds"], total["optimal_seconds"]) <= 0:
    return {**out, "estimated_step_s": None, "estimate": "none: the cost model gave a non-positive time"}
  if not peak_flops and splash_flops:
    return {**out, "estimated_step_s": None, "estimate": "none: the chip's peak FLOP/s is not listed"}
  step_s = total["optimal_seconds"] + (splash_flops / peak_flops if splash_flops else 0.0)
  return {**out, "estimated_step_s": step_s, "estimate": ESTIMATE_NOTE}


def _target_fields(target: targets_lib.Target, devices: list, memory_bytes: int | None,
                   oom: dict[str, Any] | None) -> dict[str, Any]:
  """The target's part of the report: chips, the chip's memory, and whether the step fits it."""
  hbm = target.chip.hbm_bytes
  fits = None if memory_bytes is None and oom is None else (
      oom is None and memory_bytes <= targets_lib.FIT_FRACTION * hbm)
  fields = {"target": target.name, "target_slices": target.slices, "chips": len(devices),
            "hosts": targets_lib.num_hosts(devices), "device_kind": devices[0].device_kind,
            "hbm_bytes_per_device": hbm, "fits": fits, "fits_rule": targets_lib.FIT_RULE}
  if oom is not None:
    fields.update(out_of_memory=True, compiler_hbm_bytes=oom["compiler_hbm_bytes"],
                  compiler_error=oom["compiler_error"])
  return fields


def dry_run(config: ml_collections.ConfigDict, stage: str = "compile", target: str | None = None,
            target_slices: int = 1, target_estimate: bool = True) -> dict[str, Any]:
  """Runs the checks and the `stage` ('lower' or 'compile'); returns the report printed as JSON.

  `target` (and `target_slices`): compile for that accelerator instead of this host's devices (targets.py).
  `target_estimate`: on a TPU target, also the roofline step estimate (three more, smaller compiles; see
  `estimate`); off, the report says so and only the memory and kernel are read.
  """
  if stage not in STAGES:
    raise ValueError(f"stage: expected one of {STAGES}, got {stage!r}")
  spec = None
  if target is not None:
    spec = targets_lib.parse_target(target, target_slices)
    targets_lib.require_compiler(spec)  # before the checks: a missing compiler is the first thing to fix
  elif target_slices != 1:
    raise ConfigError(f"--target_slices={target_slices}: needs --target")
  run = prepare(_on_one_host_device(config) if spec else config, None, dry_run=True)
  t, mesh, cfg = run.config.train, run.mesh, run.model_cfg
  devices = list(mesh.devices.flat)
  if spec:
    devices = targets_lib.target_devices(spec)
    mesh = targets_lib.target_mesh(config.mesh, spec, devices)
    _check_target_batch(t, mesh, spec, targets_lib.num_hosts(devices))
  shapes, step_fn, args = _step_program(cfg, t, mesh, run.rules, t.microbatches, int(t.loss_chunk_size),
                                        t.global_batch_size)

  t0 = time.time()
  lowered = _lower(step_fn, args, mesh)
  lower_s = time.time() - t0
  compiled, compile_s, oom, memory = None, None, None, {"memory_bytes_per_device": None}
  if stage == "compile":
    t0 = time.time()
    try:
      compiled = lowered.compile()
    except Exception as e:  # an out-of-memory compile is a finding (fits: false), anything else a failure
      oom = compiled_lib.out_of_memory(e) if spec else None
      if oom is None:
        raise
    compile_s = time.time() - t0
    memory = compiled_lib.memory(compiled) if compiled else {"memory_bytes_per_device": oom["memory_bytes_per_device"]}

  tokens_per_step = t.global_batch_size * t.seq_len
  flops_per_step = flops_per_token(cfg, t.seq_len) * tokens_per_step
  report = {
      "config_ok": True,
      "mode": run.config.get("mode"),
      "family": cfg.family,
      "ssa": describe_ssa(cfg.ssa),
      **ssa_param_counts(shapes),  # params, ssa_params (trainable temperatures), ssa_buffers (fixed phi)
      "mesh": dict(mesh.shape),
      "devices": f"{mesh.size} x {devices[0].device_kind}",
      "global_batch_size": t.global_batch_size,
      "seq_len": t.seq_len,
      "microbatches": t.microbatches,
      "tokens_per_step": tokens_per_step,
      # Model FLOPs of one step (6 x weights + causal attention, SSA's temperature matmuls included).
      "flops_per_step": flops_per_step,
      "ssa_flops_per_step": metrics_lib.ssa_flops_per_token(cfg, t.seq_len) * tokens_per_step,
      "stage": stage,
      "lower_s": round(lower_s, 3),
      "compile_s": None if compile_s is None else round(compile_s, 3),
      **memory,
      # The causal attention kernel in the program: 'splash' / 'cudnn' custom calls, else XLA's own.
      "attention_kernel": compiled_lib.attention_kernel(
          compiled.as_text() if compiled else lowered.as_text()) if stage == "compile" else None,
      "tokenizer_checked": run.tokenizer_checked,  # its vocab size against the model's (see unchecked if not)
      "unchecked": run.unchecked,
  }
  if spec:
    report.update(_target_fields(spec, devices, memory["memory_bytes_per_device"], oom))
    if compiled is not None and spec.chip.platform == "tpu":
      if not target_estimate:
        report.update(estimated_step_s=None, estimate="none: --notarget_estimate")
      elif not report["fits"]:
        # The probes cost about 3x the compile: not spent on a step that has to change first.
        report.update(estimated_step_s=None, estimate="none: the step does not fit")
      else:
        peak = metrics_lib.peak_flops_per_device(devices[0].device_kind)
        one_slice = dataclasses.replace(spec, slices=1)
        slice_mesh = mesh if spec.slices == 1 else targets_lib.target_mesh(
            config.mesh, one_slice, targets_lib.target_devices(one_slice))
        est = estimate(cfg, t, slice_mesh, run.rules, peak, spec.slices)
        step_s = est.get("estimated_step_s")
        est["estimated_tokens_per_s"] = tokens_per_step / step_s if step_s else None
        est["estimated_mfu"] = metrics_lib.mfu(est["estimated_tokens_per_s"], flops_per_step / tokens_per_step,
                                               peak, mesh.size) if step_s else None
        report.update(est)
    elif compiled is not None:
      report.update(estimated_step_s=None, estimate="none: the GPU compiler gives no cost analysis")
  return report
