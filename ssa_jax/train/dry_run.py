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
A step needing more memory per device than the largest chip of targets.CHIPS gets a hint (`dry_run_memory_hint`).
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


def abstract_inputs(abstract_state, state_shardings_, batch_shape: tuple[int, int], mesh):
  """(state, batch) as ShapeDtypeStructs carrying the shardings the train step is jitted with."""
  state = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                 abstract_state, state_shardings_)
  batch = {"tokens": jax.ShapeDtypeStruct(batch_shape, jnp.int32, sharding=sharding.batch_sharding(mesh))}
  return state, batch


def _step_program(cfg: ModelConfig, t, mesh, rules, microbatches: int, loss_chunk_size: int, rows: int):
  """(parameter shapes, the jitted train step, its abstract (state, batch)) for `rows` windows a step."""
  shapes = param_shapes(cfg)
  tx = make_optimizer(t, shapes, cfg)
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


@dataclasses.dataclass
class _Built:
  """The step lowered (and compiled, unless stage 'lower'), with timings; `oom`: a target's out-of-memory."""

  lowered: Any
  lower_s: float
  compiled: Any = None
  compile_s: float | None = None
  oom: dict[str, Any] | None = None
  memory: dict[str, Any] = dataclasses.field(default_factory=lambda: {"memory_bytes_per_device": None})


def _build(step_fn, args, mesh, stage: str, on_target: bool) -> _Built:
  """Lowers the step, then compiles it at stage 'compile' and reads its memory; on a target, an out-of-memory
  compile is a finding (fits: false), anything else a failure."""
  t0 = time.time()
  built = _Built(_lower(step_fn, args, mesh), time.time() - t0)
  if stage != "compile":
    return built
  t0 = time.time()
  try:
    built.compiled = built.lowered.compile()
  except Exception as e:
    built.oom = compiled_lib.out_of_memory(e) if on_target else None
    if built.oom is None:
      raise
  built.compile_s = time.time() - t0
  built.memory = (compiled_lib.memory(built.compiled) if built.compiled
                  else {"memory_bytes_per_device": built.oom["memory_bytes_per_device"]})
  return built


def _report(run, shapes, mesh, devices: list, stage: str, built: _Built) -> dict[str, Any]:
  """The report of the step on `mesh` (this host's or the target's), before any target fields."""
  t, cfg = run.config.train, run.model_cfg
  tokens_per_step = t.global_batch_size * t.seq_len
  return {
      "config_ok": True,
      "warnings": list(run.warnings),  # one line each, also on stderr (e.g. a schedule longer than the run)
      "mode": run.config.get("mode"),
      "family": cfg.family,
      "ssa": describe_ssa(cfg.ssa),
      **param_counts(cfg),  # params, ssa_params (trainable temperatures), ssa_buffers (fixed phi)
      "mesh": dict(mesh.shape),
      "devices": f"{mesh.size} x {devices[0].device_kind}",
      "global_batch_size": t.global_batch_size,
      "seq_len": t.seq_len,
      "microbatches": t.microbatches,
      "tokens_per_step": tokens_per_step,
      # Model FLOPs of one step (6 x weights + causal attention, SSA's temperature matmuls included).
      "flops_per_step": metrics_lib.training_flops_per_token(cfg, t.seq_len) * tokens_per_step,
      "ssa_flops_per_step": metrics_lib.ssa_flops_per_token(cfg, t.seq_len) * tokens_per_step,
      "stage": stage,
      "lower_s": round(built.lower_s, 3),
      "compile_s": None if built.compile_s is None else round(built.compile_s, 3),
      **built.memory,
      # The causal attention kernel in the program: 'splash' / 'cudnn' custom calls, else XLA's own.
      "attention_kernel": compiled_lib.attention_kernel(
          built.compiled.as_text() if built.compiled else built.lowered.as_text()) if stage == "compile" else None,
      "tokenizer_checked": run.tokenizer_checked,  # its vocab size against the model's (see unchecked if not)
      "unchecked": run.unchecked,
  }


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
  est = estimate(run.model_cfg, run.config.train, slice_mesh, run.rules, peak, spec.slices)
  step_s = est.get("estimated_step_s")
  tokens_per_step, flops_per_step = report["tokens_per_step"], report["flops_per_step"]
  est["estimated_tokens_per_s"] = tokens_per_step / step_s if step_s else None
  est["estimated_mfu"] = metrics_lib.mfu(est["estimated_tokens_per_s"], flops_per_step / tokens_per_step,
                                         peak, mesh.size) if step_s else None
  return est


def _parse_target(target: str | None, target_slices: int) -> targets_lib.Target | None:
  """--target / --target_slices -> the target (its compiler checked first: the first thing to fix), or None."""
  if target is None:
    if target_slices != 1:
      raise ConfigError(f"--target_slices={target_slices}: needs --target")
    return None
  spec = targets_lib.parse_target(target, target_slices)
  targets_lib.require_compiler(spec)
  return spec


def dry_run(config: ml_collections.ConfigDict, stage: str = "compile", target: str | None = None,
            target_slices: int = 1, target_estimate: bool = True) -> dict[str, Any]:
  """Runs the checks and the `stage` ('lower' or 'compile'); returns the report printed as JSON.

  `target` (and `target_slices`): compile for that accelerator instead of this host's devices (targets.py).
  `target_estimate`: on a TPU target, also the roofline step estimate (three more, smaller compiles; see
  `estimate`); off, the report says so and only the memory and kernel are read.
  """
  if stage not in STAGES:
    raise ValueError(f"stage: expected one of {STAGES}, got {stage!r}")
  spec = _parse_target(target, target_slices)
  run = prepare(_on_one_host_device(config) if spec else config, None, dry_run=True)
  t, mesh = run.config.train, run.mesh
  devices = list(mesh.devices.flat)
  if spec:
    devices = targets_lib.target_devices(spec)
    mesh = targets_lib.target_mesh(config.mesh, spec, devices)
    _check_target_batch(t, mesh, spec, targets_lib.num_hosts(devices))
  shapes, step_fn, args = _step_program(run.model_cfg, t, mesh, run.rules, t.microbatches,
                                        int(t.loss_chunk_size), t.global_batch_size)
  built = _build(step_fn, args, mesh, stage, on_target=spec is not None)
  report = _report(run, shapes, mesh, devices, stage, built)
  if spec:
    report.update(_target_fields(spec, devices, built.memory["memory_bytes_per_device"], built.oom))
    if built.compiled is not None:
      report.update(_target_estimate(config, spec, run, mesh, devices, report, target_estimate))
  return report


def dry_run_memory_hint(memory_bytes_per_device: int | None, target: str | None) -> str | None:
  """A hint for a dry run whose step needs more memory per device than any listed chip has (targets.CHIPS),
  else None."""
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
