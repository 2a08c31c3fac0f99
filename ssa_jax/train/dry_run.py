"""`train.py --dry_run`: a config's whole start without data or parameters.

Validates the config as a real run does (checks needing files a dry run does not require, such as an absent
corpus or tokenizer file, are listed under "unchecked"), builds the abstract train state with its shardings on
the configured mesh, lowers the jitted train step on abstract inputs (nothing is allocated, no corpus is read),
then compiles it and reads the executable's memory analysis. --target=NAME (targets.py) compiles the same step
for that accelerator's devices with its own compiler: the memory and the attention kernel are then the target's,
and a TPU target adds the compiler's roofline estimate of the step time (`estimate`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ssa_jax.errors import ConfigError
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.params import param_counts, param_shapes
from ssa_jax.model.splash import LANES, fit_block
from ssa_jax.runtime import sharding
from ssa_jax.train import compiled as compiled_lib, metrics as metrics_lib, targets as targets_lib
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


def _step_program(cfg: ModelConfig, t, mesh, rules, microbatches: int, loss_chunk_size: int, rows: int,
                  document_eos_id: int | None = None):
  """(the jitted train step, its (state, batch) as ShapeDtypeStructs with the shardings it is jitted with)."""
  tx = make_optimizer(t, param_shapes(cfg), cfg)
  abstract, shardings = state_shardings(cfg, tx, mesh, rules)
  state = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  batch = {"tokens": jax.ShapeDtypeStruct((rows, t.seq_len + 1), jnp.int32, sharding=sharding.batch_sharding(mesh))}
  step_fn = jit_train_step(Decoder(cfg), tx, learning_rate_schedule(t), microbatches, shardings, mesh,
                           loss_chunk_size, document_eos_id=document_eos_id)
  return step_fn, (state, batch)


def document_eos_id(run) -> int | None:
  """The EOS id documents are split at under config.data.document_masking, else None. Without a tokenizer (a
  dry run may have none) 0 stands in: which id it is changes no shape, kernel or cost of the program."""
  if not run.config.data.document_masking:
    return None
  return run.tokenizer.eos_id if run.tokenizer is not None else 0


# How each kernel confines attention to a document under config.data.document_masking (the dry run says it).
DOCUMENT_MASKING_BY_KERNEL = {
    "splash": "segment ids into the splash kernel (its static causal mask skips blocks; the segments are compared "
              "inside the blocks it computes)",
    "cudnn": "a same-document mask, which cuDNN's fused kernel takes as an additive (B, 1, T, T) bias in the "
             "compute dtype, read from memory: 2 T^2 bytes a row and layer at bf16 (the causal part stays implicit)",
    "xla": "a same-document mask beside the causal one in XLA's attention",
}


def _lower(step_fn, args, mesh):
  """The step lowered under its mesh: the attention kernel (and splash's shard_map) follow the mesh's platform."""
  with jax.set_mesh(mesh):
    return step_fn.lower(*args)


def estimate(cfg: ModelConfig, t, mesh, rules, peak_flops: float | None, slices: int = 1,
             document_eos_id: int | None = None) -> dict[str, Any]:
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
    step_fn, args = _step_program(probe_cfg, t, mesh, rules, 1, chunk_size, rows, document_eos_id)
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


def _build(step_fn, args, mesh, stage: str, on_target: bool) -> tuple[Any, dict | None, dict[str, Any]]:
  """(the compiled step or None, a target's out-of-memory figures or None, the report's fields of the build).
  On a target an out-of-memory compile is a finding (fits: false), anything else a failure."""
  t0 = time.time()
  lowered = _lower(step_fn, args, mesh)
  fields = {"stage": stage, "lower_s": round(time.time() - t0, 3)}
  if stage != "compile":
    return None, None, {**fields, "compile_s": None, "memory_bytes_per_device": None, "attention_kernel": None}
  t0 = time.time()
  compiled = oom = None
  try:
    compiled = lowered.compile()
  except Exception as e:
    oom = compiled_lib.out_of_memory(e) if on_target else None
    if oom is None:
      raise
  fields["compile_s"] = round(time.time() - t0, 3)
  memory = compiled_lib.memory(compiled) if compiled else {"memory_bytes_per_device": oom["memory_bytes_per_device"]}
  # The causal attention kernel in the program: 'splash' / 'cudnn' custom calls, else XLA's own.
  kernel = compiled_lib.attention_kernel((compiled or lowered).as_text())
  return compiled, oom, {**fields, **memory, "attention_kernel": kernel}


def mesh_slices(mesh) -> dict[str, Any]:
  """The slices a mesh spans, one slice's share of it (its own interconnect) and the mesh across slices (the
  data-center network): the data axis alone crosses slices (sharding.make_mesh)."""
  slices = sharding.num_slices(mesh.devices.flat)
  across = {axis: slices if axis == "data" else 1 for axis in mesh.shape}
  return {"slices": slices, "mesh_per_slice": {**dict(mesh.shape), "data": mesh.shape["data"] // slices},
          "mesh_across_slices": across}


def _report(run, mesh, devices: list, build: dict[str, Any]) -> dict[str, Any]:
  """The report of the step on `mesh` (this host's or the target's), before any target fields."""
  t, cfg = run.config.train, run.model_cfg
  tokens_per_step = t.global_batch_size * t.seq_len
  return {
      "config_ok": True,
      "warnings": list(run.warnings),  # one line each, also on stderr (e.g. a schedule longer than the run)
      "mode": run.config.get("mode"),
      "family": cfg.family,
      "ssa": describe_ssa(cfg.ssa),
      "attention_kind": cfg.attention_kind,
      **param_counts(cfg),  # params, ssa_params (trainable temperatures), ssa_buffers (fixed phi)
      "mesh": dict(mesh.shape),
      **mesh_slices(mesh),
      "devices": f"{mesh.size} x {devices[0].device_kind}",
      "global_batch_size": t.global_batch_size,
      "seq_len": t.seq_len,
      "microbatches": t.microbatches,
      "tokens_per_step": tokens_per_step,
      "flops_per_step": metrics_lib.training_flops_per_token(cfg, t.seq_len) * tokens_per_step,
      "ssa_flops_per_step": metrics_lib.ssa_flops_per_token(cfg, t.seq_len) * tokens_per_step,
      **build,
      "document_masking": (DOCUMENT_MASKING_BY_KERNEL.get(build["attention_kernel"], True)
                           if run.config.data.document_masking else False),
      "tokenizer_checked": run.tokenizer_checked,  # its vocab size against the model's (see unchecked if not)
      "unchecked": run.unchecked,
  }


def _target_fields(target: targets_lib.Target, devices: list, memory_bytes: int | None,
                   oom: dict[str, Any] | None) -> dict[str, Any]:
  """The target's part of the report: chips, the chip's memory, and whether the step fits it."""
  hbm = target.chip.hbm_bytes
  fits = False if oom else None if memory_bytes is None else memory_bytes <= targets_lib.FIT_FRACTION * hbm
  fields = {"target": target.name, "target_slices": target.slices, "chips": len(devices),
            "hosts": targets_lib.num_hosts(devices), "device_kind": devices[0].device_kind,
            "hbm_bytes_per_device": hbm, "fits": fits, "fits_rule": targets_lib.FIT_RULE}
  if oom is not None:
    fields.update(out_of_memory=True, compiler_hbm_bytes=oom["compiler_hbm_bytes"],
                  compiler_error=oom["compiler_error"])
  return fields


def _target_estimate(config: ml_collections.ConfigDict, spec: targets_lib.Target, run, mesh, devices: list,
                     report: dict[str, Any], wanted: bool) -> dict[str, Any]:
  """The estimate fields of a compiled step on a target: the roofline (TPU, when wanted and it fits), else why not."""
  if spec.chip.platform != "tpu":
    return dict(estimated_step_s=None, estimate="none: the GPU compiler gives no cost analysis")
  if not wanted:
    return dict(estimated_step_s=None, estimate="none: --notarget_estimate")
  if not report["fits"]:
    # The probes cost about 3x the compile: not spent on a step that has to change first.
    return dict(estimated_step_s=None, estimate="none: the step does not fit")
  peak = metrics_lib.peak_flops_per_device(devices[0].device_kind)
  one_slice = dataclasses.replace(spec, slices=1)
  slice_mesh = mesh if spec.slices == 1 else targets_lib.target_mesh(
      config.mesh, one_slice, targets_lib.target_devices(one_slice))
  est = estimate(run.model_cfg, run.config.train, slice_mesh, run.rules, peak, spec.slices, document_eos_id(run))
  step_s, tokens_per_step = est.get("estimated_step_s"), report["tokens_per_step"]
  est["estimated_tokens_per_s"] = tokens_per_step / step_s if step_s else None
  est["estimated_mfu"] = metrics_lib.mfu(est["estimated_tokens_per_s"], report["flops_per_step"] / tokens_per_step,
                                         peak, mesh.size) if step_s else None
  return est


def setup(config: ml_collections.ConfigDict, spec: targets_lib.Target | None):
  """(the checked run, its mesh, the mesh's devices): this host's, or `spec`'s devices and their mesh."""
  host_config = config
  if spec:
    targets_lib.require_compiler(spec)  # before the config's checks: the first thing to fix
    # This host's checks run on one device; the target's mesh is laid over the target's devices below.
    host_config = ml_collections.ConfigDict(config.to_dict())
    host_config.mesh.update(dict(data=1, fsdp=1, tensor=1, num_devices=1))
  run = prepare(host_config, None, dry_run=True)
  t, mesh = run.config.train, run.mesh
  devices = list(mesh.devices.flat)
  if spec:
    devices = targets_lib.target_devices(spec)
    mesh = targets_lib.target_mesh(config.mesh, spec, devices)
    sharding.check_batch_divisible(t.global_batch_size, mesh, t.microbatches)
    hosts = targets_lib.num_hosts(devices)
    if t.global_batch_size % hosts:
      raise ConfigError(f"config.train.global_batch_size: {t.global_batch_size} is not divisible by the {hosts} "
                        f"hosts of {spec.name}" + (f" x {spec.slices}" if spec.slices > 1 else ""))
  return run, mesh, devices


def _run_program(run, mesh):
  """The run's jitted train step and its abstract (state, batch) on `mesh`."""
  t = run.config.train
  return _step_program(run.model_cfg, t, mesh, run.rules, t.microbatches, int(t.loss_chunk_size),
                       t.global_batch_size, document_eos_id(run))


def compile_on_target(config: ml_collections.ConfigDict, target: str, target_slices: int = 1,
                      compiler_options: dict[str, Any] | None = None):
  """The train step compiled for `target` (x `target_slices`) as the dry run compiles it, with the compiler's
  `compiler_options` (e.g. xla_dump_to): (the compiled executable, its mesh, its abstract (state, batch) with
  their shardings). For reading the program itself (bench/slice_collectives.py: what crosses slices)."""
  spec = targets_lib.parse_target(target, target_slices)
  run, mesh, _ = setup(config, spec)
  step_fn, args = _run_program(run, mesh)
  return _lower(step_fn, args, mesh).compile(compiler_options=compiler_options), mesh, args


def dry_run(config: ml_collections.ConfigDict, stage: str = "compile", target: str | None = None,
            target_slices: int = 1, target_estimate: bool = True) -> dict[str, Any]:
  """Runs the checks and the `stage` ('lower' or 'compile') on this host's devices or on `target`'s (and
  `target_slices`'); returns the report printed as JSON. `target_estimate`: a TPU target's `estimate` too."""
  if stage not in STAGES:
    raise ValueError(f"stage: expected one of {STAGES}, got {stage!r}")
  if target is None and target_slices != 1:
    raise ConfigError(f"--target_slices={target_slices}: needs --target")
  spec = targets_lib.parse_target(target, target_slices) if target is not None else None
  run, mesh, devices = setup(config, spec)
  step_fn, args = _run_program(run, mesh)
  compiled, oom, build = _build(step_fn, args, mesh, stage, on_target=spec is not None)
  report = _report(run, mesh, devices, build)
  if spec:
    report.update(_target_fields(spec, devices, build["memory_bytes_per_device"], oom))
    if compiled is not None:
      report.update(_target_estimate(config, spec, run, mesh, devices, report, target_estimate))
  return report


def dry_run_memory_hint(memory_bytes_per_device: int | None, target: str | None) -> str | None:
  """A hint when the step needs more memory per device than any chip of targets.CHIPS has, else None."""
  largest = max(targets_lib.CHIPS.values(), key=lambda chip: chip.hbm_bytes)
  if not memory_bytes_per_device or memory_bytes_per_device <= largest.hbm_bytes:
    return None
  need = (f"{memory_bytes_per_device / targets_lib.GiB:,.0f} GiB per device, more than any accelerator has "
          f"(the largest, {largest.name}: {largest.hbm_bytes / targets_lib.GiB:,.0f} GiB)")
  if target:
    return (f"{need} on {target}: shard the state over more devices (config.mesh.fsdp), recompute "
            f"activations (config.model.remat) or split the batch (config.train.microbatches)")
  return (f"{need} on this host's {jax.device_count()} device(s): compile for the accelerator you will train "
          f"on with --dry_run --target=NAME (e.g. --target=v5p-8), which reports its memory per device")
