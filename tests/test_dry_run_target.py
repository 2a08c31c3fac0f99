"""`train.py --dry_run --target=NAME`: the train step compiled on this CPU host by a TPU's (libtpu) or a GPU's
(jax's CUDA plugin) own compiler, for that accelerator's devices.

The TPU compiles need libtpu (the test extra installs it; skipped where absent), the GPU compile jax's CUDA
plugin (5.5 GB: a slow test, skipped where absent). Everything else here runs without either.
"""

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from ssa_jax.errors import ConfigError
from ssa_jax.train import compiled as compiled_lib
from ssa_jax.train import targets
from ssa_jax.train.dry_run import dry_run

REPO = Path(__file__).resolve().parents[1]
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
HAS_CUDA_PLUGIN = any(importlib.util.find_spec(m) is not None for m in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="needs the TPU compiler: pip install -e '.[tpu]'")
GiB = 2**30


def tiny(**model) -> object:
  """The demo config (configs/tiny_ssa.py: SSA on q and v, token + position temperatures), model fields set."""
  config = importlib.import_module("configs.tiny_ssa").get_config()
  config.model.update(model)
  return config


@pytest.mark.parametrize("name, chips, shape, canonical", [
    ("v5p-8", 4, (2, 2, 1), "v5p-8"),  # v5p names count TensorCores: 2 a chip
    ("v5p-1024", 512, (8, 8, 8), "v5p-1024"),
    ("v4-8", 4, (2, 2, 1), "v4-8"),
    ("v5litepod-16", 16, (4, 4), "v5e-16"),  # v5e / v6e names count chips
    ("v5e-4", 4, (2, 2), "v5e-4"),
    ("v6e-256", 256, (16, 16), "v6e-256"),
    ("h100-8", 8, (1, 1, 8), "h100-8"),
    ("H200-16", 16, (2, 1, 8), "h200-16"),  # 8 GPUs a host
    ("a100-2", 2, (1, 1, 2), "a100-2"),
])
def test_accelerator_types(name, chips, shape, canonical):
  target = targets.parse_target(name)
  assert (target.chips, target.shape, target.name) == (chips, shape, canonical)


@pytest.mark.parametrize("name, slices, says", [
    ("v5p-7", 1, "TensorCores"), ("v5e-3", 1, "v5e-4"), ("v5p-24", 1, "not a v5p slice"),
    ("x100-8", 1, "unknown accelerator"), ("h100-12", 1, "multiple of 8"), ("h100-8", 2, "TPU pods"),
    ("v5p-8", 0, "--target_slices"),
])
def test_bad_targets_fail_in_one_line(name, slices, says):
  with pytest.raises(ConfigError, match=says) as e:
    targets.parse_target(name, slices)
  assert "\n" not in str(e.value)


def test_a_missing_compiler_names_the_extra(monkeypatch):
  """Where the target's compiler is absent the dry run stops at once, naming what to install."""
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
  with pytest.raises(ConfigError, match=r"pip install -e '\.\[tpu\]'"):
    dry_run(tiny(), target="v5p-8")
  with pytest.raises(ConfigError, match=r"pip install -e '\.\[cuda\]'"):
    dry_run(tiny(), target="h100-8")


@pytest.mark.skipif(HAS_CUDA_PLUGIN, reason="jax's CUDA plugin is installed here")
def test_the_command_without_the_gpu_compiler_prints_one_error_line():
  proc = subprocess.run([sys.executable, "train.py", "--config=configs/tiny_ssa.py", "--dry_run", "--target=h100-8"],
                        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ})
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "pip install -e '.[cuda]'" in errors[0], proc.stderr[-2000:]


def test_the_gpu_target_config_carries_the_chip():
  text = targets.gpu_target_config(targets.CHIPS["h100"])
  assert "core_count: 132" in text and "cuda_compute_capability { major: 9 minor: 0 }" in text
  assert f"device_memory_size: {80 * GiB}" in text and 'device_description_str: "NVIDIA H100 80GB HBM3"' in text


def test_out_of_memory_messages():
  """The figures of the TPU compiler's out-of-memory messages (the first as seen from libtpu 0.0.42.1)."""
  seen = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (19.74G) "
          "exceeds available HBM (15.75G).")
  oom = compiled_lib.out_of_memory(RuntimeError(seen))
  assert oom["memory_bytes_per_device"] == int(19.74 * GiB) and oom["compiler_hbm_bytes"] == int(15.75 * GiB)
  other = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. Used "
           "20.43G of 15.75G hbm. Exceeded hbm capacity by 4.68G.\n\nTotal hbm usage >= 20.68G:")
  oom = compiled_lib.out_of_memory(RuntimeError(other))
  assert oom["memory_bytes_per_device"] == int(20.43 * GiB) and oom["compiler_hbm_bytes"] == int(15.75 * GiB)
  assert compiled_lib.out_of_memory(ValueError("INVALID_ARGUMENT: bad shape")) is None


@needs_libtpu
@pytest.mark.parametrize("name, devices, hosts", [("v5p-16", 8, 2), ("v4-8", 4, 1), ("v5e-16", 16, 2),
                                                  ("v6e-4", 4, 1)])
def test_tpu_topologies(name, devices, hosts):
  """The compiler's description of each slice: one device a chip (v4 / v5p megacore), its hosts."""
  got = targets.target_devices(targets.parse_target(name))
  assert len(got) == devices and targets.num_hosts(got) == hosts
  assert got[0].platform == "tpu" and got[0].device_kind.startswith("TPU v")


@needs_libtpu
def test_the_config_mesh_resolves_against_the_target():
  """-1 takes the target's devices (not this host's); K slices put the data axis across them over DCN."""
  def mesh(name, slices=1, **sizes):
    target = targets.parse_target(name, slices)
    cfg = ml_collections.ConfigDict(dict(dict(data=-1, fsdp=1, tensor=1, num_devices=-1), **sizes))
    return targets.target_mesh(cfg, target, targets.target_devices(target))

  assert dict(mesh("v5p-64").shape) == {"data": 32, "fsdp": 1, "tensor": 1}
  assert dict(mesh("v5p-64", data=1, fsdp=-1).shape) == {"data": 1, "fsdp": 32, "tensor": 1}
  two = mesh("v5p-8", 2, data=-1, tensor=2)
  assert dict(two.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
  slice_of = np.vectorize(lambda d: d.slice_index)(two.devices)
  assert (slice_of[:2] == 0).all() and (slice_of[2:] == 1).all()  # slices split the data axis only
  with pytest.raises(ConfigError, match="config.mesh"):
    mesh("v5p-8", tensor=3)


@needs_libtpu
def test_tpu_compile_of_a_tiny_config():
  """The demo model (2 scanned layers, bf16) compiled for a v5p-8 by libtpu: the TPU compiler's memory,
  the splash kernel in the program, and a roofline estimate of the order of the analytic FLOPs."""
  config = tiny(num_layers=2, scan_layers=True, dtype="bfloat16")
  report = dry_run(config, target="v5p-8")
  assert report["device_kind"] == "TPU v5" and report["devices"] == "4 x TPU v5"
  assert (report["chips"], report["hosts"], report["mesh"]) == (4, 1, {"data": 4, "fsdp": 1, "tensor": 1})
  assert report["hbm_bytes_per_device"] == 95 * GiB and report["fits"] is True
  assert report["attention_kernel"] == "splash"
  # The memory is the TPU compiler's: its arrays are tiled (padded), so the state takes at least its raw bytes
  # per device (replicated fp32 params + two Adam moments), and the figures differ from the CPU backend's.
  raw_state = 3 * 4 * report["params"]
  assert raw_state <= report["memory_analysis"]["argument_size_in_bytes"] <= 2 * raw_state + 2**20
  cpu = dry_run(config)
  assert cpu["attention_kernel"] == "xla" and cpu["memory_analysis"] != report["memory_analysis"]
  # The estimate: per device, the compiler's FLOPs (splash's added) near the analytic model FLOPs.
  analytic = report["flops_per_step"] / report["chips"]
  assert 0.5 * analytic < report["roofline_flops_per_device"] < 3 * analytic, report
  assert report["estimated_step_s"] > 0 and 0 < report["estimated_mfu"] < 1
  assert report["estimated_tokens_per_s"] == pytest.approx(report["tokens_per_step"] / report["estimated_step_s"])
  assert report["estimate"].startswith("estimate:")


@needs_libtpu
def test_two_slice_tpu_compile():
  """Two v5p-8 slices over DCN: 8 chips on 2 hosts, the data axis across the slices; the estimate is one
  slice's share of the batch."""
  report = dry_run(tiny(num_layers=1), target="v5p-8", target_slices=2)
  assert (report["chips"], report["hosts"], report["target_slices"]) == (8, 2, 2)
  assert report["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1} and report["fits"] is True
  assert report["slices"] == 2 and report["mesh_per_slice"] == {"data": 4, "fsdp": 1, "tensor": 1}
  assert report["mesh_across_slices"] == {"data": 2, "fsdp": 1, "tensor": 1}
  assert report["attention_kernel"] == "splash" and report["estimated_step_s"] > 0


@needs_libtpu
def test_no_estimate_skips_the_probe_compiles():
  """--notarget_estimate: the memory and kernel of the one compile, no roofline probes. With document masking
  on, splash compiles with segment ids and the report says so."""
  config = tiny(num_layers=1)
  config.data.document_masking = True
  report = dry_run(config, target="v5e-4", target_estimate=False)
  assert report["fits"] is True and report["attention_kernel"] == "splash" and report["memory_bytes_per_device"] > 0
  assert report["document_masking"].startswith("segment ids into the splash kernel")
  assert report["estimated_step_s"] is None and report["estimate"] == "none: --notarget_estimate"
  assert "estimate_probes_compile_s" not in report and "roofline_flops_per_device" not in report


@needs_libtpu
def test_an_out_of_memory_compile_is_a_finding():
  """A step too large for a v5e-1 (16 GiB) is reported as not fitting, with the compiler's figures: here a
  4.3B-parameter model (its fp32 state alone is 52 GB), which the compiler rejects in seconds."""
  config = tiny(num_layers=1, vocab_size=2**20, d_model=2048, num_heads=16, mlp_dim=2048)
  report = dry_run(config, target="v5e-1")
  assert report["fits"] is False and report["out_of_memory"] is True, report
  assert report["memory_bytes_per_device"] > report["compiler_hbm_bytes"] > 15 * GiB
  assert "estimated_step_s" not in report


@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="needs jax's CUDA plugin: pip install -e '.[cuda]' (5.5 GB)")
def test_gpu_compile_picks_cudnn_for_bf16_and_xla_for_float32():
  """8 H100s described by a GpuTargetConfigProto, compiled by XLA's GPU compiler without a GPU: the bf16
  model's attention is cuDNN's fused kernel, the float32 demo's XLA's."""
  bf16 = dry_run(tiny(dtype="bfloat16"), target="h100-8")
  assert bf16["device_kind"] == "NVIDIA H100 80GB HBM3" and bf16["chips"] == 8
  assert bf16["attention_kernel"] == "cudnn" and bf16["fits"] is True
  assert bf16["memory_bytes_per_device"] > 0 and bf16["estimated_step_s"] is None
  demo = dry_run(tiny(), target="h100-8")
  assert demo["attention_kernel"] == "xla" and demo["fits"] is True
  masked = tiny(dtype="bfloat16")
  masked.data.document_masking = True  # cuDNN takes the document mask as a bias
  report = dry_run(masked, target="h100-8")
  assert report["attention_kernel"] == "cudnn" and report["document_masking"].startswith("a same-document mask")
