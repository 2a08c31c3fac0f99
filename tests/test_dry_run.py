"""`train.py --dry_run`: every shipped config starts (validation, abstract state on the 8-device mesh, the train
step lowered or compiled on abstract inputs), with no corpus, no HF checkpoint and no parameter allocated.

In CI (about 2 minutes on a 2-core CPU) every config is validated; the step is compiled for the demo-sized
models and lowered for the large presets, once per distinct step program (see `program_key`: a fine-tune
config whose model and step differ from its pre-training twin's only in batch size, optimizer constants and
initial values shares its lowering). The slow test compiles every config's step.
"""

import dataclasses
import functools
import importlib
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from ssa_jax.model.config import model_config_from_dict
from ssa_jax.train.dry_run import dry_run, dry_run_memory_hint
from ssa_jax.train.preflight import check_config

REPO = Path(__file__).resolve().parents[1]
needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
REPORT_KEYS = {"params", "ssa_params", "ssa_buffers", "flops_per_step", "compile_s", "memory_bytes_per_device", "attention_kernel"}
SMALL_D_MODEL = 256  # demo-sized models: compiled in CI
LARGE_D_MODEL = 4096  # the 7B / 8B presets: lowered in a test of their own
FAST_PROGRAMS = ["tiny_ssa", "tiny_table8_position_frequency", "tiny_table8_token_yarn", "gpt2_ssa_ws"]


@functools.cache
def shipped_configs() -> dict[str, object]:
  """{name: config} for every configs/*.py with a get_config() that takes no argument (table8.py is a
  library of rows: its rows ship as configs/tiny_table8_*.py)."""
  out = {}
  for path in sorted((REPO / "configs").glob("*.py")):
    module = importlib.import_module(f"configs.{path.stem}")
    get_config = getattr(module, "get_config", None)
    if get_config is None or path.stem == "base":  # base.py: the library the named configs call
      continue
    required = [p for p in inspect.signature(get_config).parameters.values() if p.default is p.empty]
    if not required:
      out[path.stem] = get_config()
  return out


def program_key(config) -> tuple:
  """What the lowered train step depends on beyond shapes and constants (initial values excluded)."""
  model = model_config_from_dict(config.model)
  model = dataclasses.replace(model, init_std=0.0,
                              ssa=dataclasses.replace(model.ssa, position_tau_at_end=0.0, feature_path=""))
  t = config.train
  return (repr(model), t.seq_len, t.microbatches, t.temperatures_only, t.get("loss_chunk_size"),
          json.dumps(config.mesh.to_dict(), sort_keys=True), json.dumps(config.sharding.to_dict(), sort_keys=True))


def _check_report(name, report, stage):
  assert REPORT_KEYS <= set(report), (name, report)
  assert report["params"] > 0 and 0 <= report["ssa_params"] < report["params"], (name, report)
  # The frequency token term's phi is a fixed table (one number per vocabulary entry), reported apart.
  model = shipped_configs()[name].model
  is_frequency = model.ssa.enabled and model.ssa.token and model.ssa.token_kind == "frequency"
  assert report["ssa_buffers"] == (model.vocab_size if is_frequency else 0), (name, report)
  assert report["flops_per_step"] > 6 * report["params"] * report["tokens_per_step"] * 0.5, (name, report)
  if stage == "compile":
    assert report["compile_s"] > 0 and report["memory_bytes_per_device"] > 0, (name, report)
    assert report["attention_kernel"] == "xla", (name, report)  # on this CPU (TPU / GPU: test_dry_run_target.py)
  else:
    assert report["compile_s"] is None and report["memory_bytes_per_device"] is None
    assert report["attention_kernel"] is None


def step_programs() -> dict[str, list[str]]:
  """{representative: configs sharing its step program}: pre-training and demo configs first, so that a
  fine-tune config falls to its pre-training twin."""
  configs = shipped_configs()
  order = sorted(configs, key=lambda n: (n.endswith("_ft"), n.startswith(("study", "compare")), n))
  first_with_key, groups = {}, {}
  for name in order:
    key = program_key(configs[name])
    rep = first_with_key.setdefault(key, name)
    groups.setdefault(rep, []).append(name)
  return groups


def _start(names: list[str]) -> dict[str, str]:
  """Dry-runs each config: compiled when demo-sized, else lowered; returns what happened and how long."""
  configs, how = shipped_configs(), {}
  for name in names:
    config = configs[name]
    stage = "compile" if config.model.d_model <= SMALL_D_MODEL else "lower"
    t0 = time.time()
    _check_report(name, dry_run(config, stage=stage), stage)
    how[name] = f"{stage} {time.time() - t0:.1f}s"
  print(json.dumps(how, indent=1))
  return how


@needs_8
def test_every_config_starts():
  """Every config validated on the 8-device mesh; each step program up to 410M built (7B / 8B: the next test)."""
  configs = shipped_configs()
  assert len(configs) >= 30 and "tiny_ssa" in configs and "llama2_7b_ssa_ft" in configs
  for name, config in configs.items():
    run = check_config(config, None, dry_run=True)
    assert run.mesh.size == 8, name
  groups = step_programs()
  assert sum(len(g) for g in groups.values()) == len(configs)
  assert groups["gpt2_ssa"] == ["gpt2_ssa", "gpt2_ssa_ft"]  # twins: the same step program
  # One program of each kind here (the demo's, the frequency term's, a fixed query-only kind's, a weight-sharing
  # preset's lowering); every other program of up to 410M: test_every_step_program_starts (slow).
  how = _start(FAST_PROGRAMS)
  assert {h.split()[0] for h in how.values()} == {"compile", "lower"}


@pytest.mark.slow
@needs_8
def test_every_step_program_starts():
  """Each distinct step program up to 410M compiled (demo-sized) or lowered (about 4 minutes on a 2-core CPU)."""
  configs = shipped_configs()
  _start([n for n in step_programs() if configs[n].model.d_model < LARGE_D_MODEL and n not in FAST_PROGRAMS])


@needs_8
def test_every_7b_and_8b_config_lowers():
  """The 7B / 8B presets' step programs lowered on abstract inputs (about a minute on a 2-core CPU)."""
  configs = shipped_configs()
  how = _start([n for n in step_programs() if configs[n].model.d_model >= LARGE_D_MODEL])
  assert len(how) >= 6


@pytest.mark.slow
@needs_8
@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_config_compiles(name):
  """Full compile of each config's step on the 8-device CPU mesh (the 7B / 8B presets take minutes each)."""
  report = dry_run(shipped_configs()[name], stage="compile")
  _check_report(name, report, "compile")


def test_dry_run_command_prints_one_json_line_and_touches_nothing(tmp_path):
  """The command as a user runs it: no corpus built, no workdir made, the report as the last stdout line."""
  cache, workdir = tmp_path / "cache", tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, str(REPO / "train.py"), "--config=configs/tiny_ssa.py", "--dry_run",
       f"--workdir={workdir}", f"--config.data.cache_dir={cache}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ})
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  _check_report("tiny_ssa", report, "compile")
  assert report["ssa_params"] > 0 and report["mode"] == "demo"
  assert report["tokenizer_checked"] is True and report["unchecked"] == []  # the demo BPE, by its configured size
  assert report["tokens_per_step"] == 16 * 128
  assert not cache.exists() and not workdir.exists()


def test_dry_run_names_what_it_could_not_check(tmp_path):
  """A fine-tune config without its HF checkpoint and corpus still starts, and says what a real run needs."""
  config = importlib.import_module("configs.pythia160m_ssa_ft").get_config()
  config.model.update(dict(d_model=64, num_layers=2, num_heads=4, mlp_dim=128))  # a fast stand-in shape
  config.mesh.update(dict(data=-1, fsdp=1, tensor=1, num_devices=1))
  config.data.tokenizer_path = str(tmp_path / "missing_tokenizer.json")
  report = dry_run(config, stage="lower")
  assert any(u.startswith("config.init.hf_dir: required") for u in report["unchecked"]), report["unchecked"]
  assert any(u.startswith("config.data.path: required") for u in report["unchecked"])
  assert any("missing_tokenizer.json does not exist" in u for u in report["unchecked"])
  assert report["tokenizer_checked"] is False


def test_the_memory_hint_reads_the_chip_table():
  """A step needing more than the largest listed chip (an H200: 141 GiB = 151,397,597,184 bytes) gets a hint
  naming the fix; one that fits an H200, even past 141e9 bytes, gets none."""
  h200 = 141 * 1024**3
  assert h200 == 151_397_597_184
  assert dry_run_memory_hint(h200, None) is None
  assert dry_run_memory_hint(145e9, None) is None  # over 141e9, under 141 GiB: an H200 holds it
  assert dry_run_memory_hint(None, None) is None and dry_run_memory_hint(40e9, "v5e-4") is None
  here = dry_run_memory_hint(h200 + 1, None)
  assert "--dry_run --target=" in here and "h200: 141 GiB" in here
  assert "config.mesh.fsdp" in dry_run_memory_hint(2.46e12, "v5p-8")
