"""What a run records besides its loss: per-layer / per-group norms (against numpy), a jax.profiler trace, and an
offline W&B run that a resumed run continues (its history read back from the run file W&B wrote)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util
from wandb.proto import wandb_internal_pb2

from ssa_jax.data import demo
from ssa_jax.model.config import ModelConfig, SSAConfig
from ssa_jax.model.params import init_variables, unstack_layers
from ssa_jax.train.loop import train
from ssa_jax.train.tree_norms import tree_norms
from ssa_jax.train.wandb_run import ID_FILE
from train_configs import tiny_run_config

SCALAR_NAMES = {"alpha", "log_tau", "ssmax_s", "beta"}  # SSA's single learned scalars, by name (test-side)


def _numpy_norms(params: dict, num_layers: int) -> dict[str, float]:
  """The norms written out leaf by leaf in float64 over the unrolled layout, SSA's groups told apart by name."""
  squares: dict[str, float] = {}
  for path, leaf in traverse_util.flatten_dict(params).items():
    value = float(np.sum(np.square(np.asarray(leaf, np.float64))))
    squares[path[0]] = squares.get(path[0], 0.0) + value
    if any(p.startswith("ssa_") for p in path):
      group = "ssa_scalar" if path[-1] in SCALAR_NAMES else "ssa_matrix"
      squares[group] = squares.get(group, 0.0) + value
  squares["layers"] = [squares.pop(f"layers_{i}") for i in range(num_layers)]
  return {k: np.sqrt(v) for k, v in squares.items()}


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("token_kind", ["mlp", "shared"])
def test_tree_norms_equal_numpy_by_layer_module_and_group(scan, token_kind):
  cfg = ModelConfig(family="llama", vocab_size=64, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, mlp_dim=48,
                    max_seq_len=32, scan_layers=scan, ssa=SSAConfig(enabled=True, token_kind=token_kind))
  params = init_variables(cfg, jax.random.PRNGKey(0))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
  ours = {k.split("/", 1)[1]: np.asarray(v) for k, v in tree_norms(params, cfg, "grad").items()}
  want = _numpy_norms(unstack_layers(params, cfg.num_layers), cfg.num_layers)
  assert sorted(ours) == sorted(want)
  for name, value in want.items():
    np.testing.assert_allclose(ours[name], value, rtol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  cache = tmp_path_factory.mktemp("cache")
  return demo.ensure_demo_corpus(str(cache)), demo.ensure_demo_tokenizer(str(cache), 512)


def _wandb_history(run_file: Path) -> dict[int, float]:
  """{step: loss} of the history records in a W&B run file, read here: a 7-byte header, then LevelDB log framing
  (32 KiB blocks of chunks: crc32, length, type; a record is one FULL chunk or FIRST ... LAST) around protobuf
  `Record`s (wandb.proto)."""
  data, block, pos, chunks, history = run_file.read_bytes(), 32768, 7, b"", {}
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # a block's tail too short for a header is padding
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    chunks, pos = chunks + data[pos + 7:pos + 7 + length], pos + 7 + length
    if kind in (1, 4):  # FULL or LAST: a whole record
      record = wandb_internal_pb2.Record.FromString(chunks)
      items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
      if "loss" in items:
        history[items["_step"]] = items["loss"]
      chunks = b""
  return history


def test_a_12_step_run_writes_norms_a_profile_and_an_offline_wandb_run_that_resuming_continues(
    corpus, tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  config = tiny_run_config(*corpus, steps=12, log_every=4, checkpoint_every=12, profile_start_step=2,
                           profile_num_steps=3, wandb=True, wandb_project="ssa-jax-test")
  config.model.vocab_size = 512
  workdir = tmp_path / "run"
  train(config, str(workdir))

  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  logged = [r for r in records if "loss" in r]
  assert [r["step"] for r in logged] == [4, 8, 12]
  for r in logged:  # the layers, the other modules and nothing else make up the global gradient norm
    parts = [v for k, v in r.items() if k.startswith("grad_norm/") and not k.startswith("grad_norm/ssa_")]
    total = sum(np.sum(np.square(v)) for v in parts)
    assert np.sqrt(total) == pytest.approx(r["grad_norm"], rel=1e-4)
    assert len(r["update_norm/layers"]) == config.model.num_layers and r["param_norm/ssa_matrix"] > 0

  traces = list((workdir / "profile").rglob("*.xplane.pb"))
  assert traces, sorted(p.name for p in (workdir / "profile").rglob("*"))
  said = capsys.readouterr()
  assert f"profile of steps 3-5: {workdir / 'profile'}" in said.out + said.err

  run_id = (workdir / ID_FILE).read_text().strip()
  (first,) = (workdir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
  assert _wandb_history(first) == {r["step"]: pytest.approx(r["loss"]) for r in logged}

  config.train.steps = 16
  train(config, str(workdir))  # resumes from step 12 into the same W&B run
  assert (workdir / ID_FILE).read_text().strip() == run_id
  files = sorted((workdir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
  assert len(files) == 2
  second = next(f for f in files if f != first)
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  resumed = {r["step"]: pytest.approx(r["loss"]) for r in records if r["step"] > 12 and "loss" in r}
  assert _wandb_history(second) == resumed
  assert 16 in _wandb_history(second)


def test_profile_steps_are_checked_by_name(corpus, tmp_path):
  config = tiny_run_config(*corpus, profile_num_steps=-1)
  with pytest.raises(Exception, match=r"config\.train\.profile_num_steps: expected an int >= 0, got -1"):
    train(config, str(tmp_path / "bad"))


def test_norms_are_off_when_asked(corpus, tmp_path):
  config = tiny_run_config(*corpus, steps=2, layer_norms=False, checkpoint_every=2)
  config.model.vocab_size = 512
  train(config, str(tmp_path / "off"))
  record = json.loads((tmp_path / "off" / "metrics.jsonl").read_text().splitlines()[0])
  assert "grad_norm" in record and not [k for k in record if "_norm/" in k]

