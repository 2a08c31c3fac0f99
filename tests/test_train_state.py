"""The training side's start: create_state fills the frequency feature phi from its counts file (the model no
longer reads files), warns when SSMax starts a pretrained model, and the model does not import the data layer."""

import dataclasses
import os
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from ssa_jax.errors import ConfigError
from ssa_jax.formats import checkpoint
from ssa_jax.formats.hf import from_hf, to_hf
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.params import init_variables
from ssa_jax.train.state import create_state, state_shardings
from ssa_jax.train.step import make_train_step
from tiny_models import tiny_config

REPO = Path(__file__).resolve().parents[1]
RULES = [["vocab", None], ["embed", None], ["mlp", None], ["heads", None], ["kv_heads", None], ["head_dim", None],
         ["norm", None], ["ssa_hidden", None], ["ssa_heads", None], ["layers", None]]


def _state(cfg, variables=None, tx=optax.sgd(0.1)):
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  _, shardings = state_shardings(cfg, tx, mesh, RULES)
  return create_state(cfg, tx, shardings, jax.random.PRNGKey(0), variables)


def _counts_file(tmp_path, vocab):
  counts = np.random.default_rng(0).integers(0, 1000, vocab - 3)  # a tokenizer smaller than the embedding
  path = tmp_path / "counts.npy"
  np.save(path, counts)
  log = np.log(np.pad(counts, (0, 3)) + 1.0)
  return str(path), (log - log.mean()) / log.std()  # the standardized log frequency, written out


def _frequency_config(tmp_path):
  cfg = tiny_config("neox", enabled=True, token_kind="frequency")
  path, expected = _counts_file(tmp_path, cfg.vocab_size)
  return dataclasses.replace(cfg, ssa=dataclasses.replace(cfg.ssa, feature_path=path)), expected


@pytest.mark.parametrize("from_params", [False, True], ids=["fresh", "pretrained"])
def test_create_state_fills_phi_from_the_counts_file(tmp_path, from_params):
  cfg, expected = _frequency_config(tmp_path)
  assert not np.any(init_variables(cfg, jax.random.PRNGKey(0))["buffers"]["token_feature"])  # the model's init: 0
  variables = jax.device_get(init_variables(cfg, jax.random.PRNGKey(1))) if from_params else None
  state = _state(cfg, variables)
  np.testing.assert_allclose(np.asarray(state.buffers["token_feature"]), expected, rtol=1e-5, atol=1e-6)


def test_phi_is_a_buffer_kept_by_checkpoints_and_hf_exports_and_never_updated(tmp_path):
  cfg, expected = _frequency_config(tmp_path)
  state = _state(cfg, tx=optax.adam(0.1))
  assert "token_feature" not in state.params and set(state.buffers) == {"token_feature"}
  step = jax.jit(make_train_step(Decoder(cfg), optax.adam(0.1), lambda s: 0.1, microbatches=1))
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 17))
  after, _ = step(state, {"tokens": tokens})
  np.testing.assert_array_equal(after.buffers["token_feature"], state.buffers["token_feature"])
  assert not np.allclose(after.params["embed"]["embedding"], state.params["embed"]["embedding"])  # it trained

  mngr = checkpoint.train_manager(tmp_path / "run", keep=1, async_save=False)
  checkpoint.save_train_state(mngr, after, [{}], {"model": dataclasses.asdict(cfg)})
  abstract, shardings = state_shardings(cfg, optax.adam(0.1), Mesh(np.array(jax.devices()[:1]), ("data",)), RULES)
  restored, _, _ = checkpoint.restore_train_state(mngr, 1, abstract, shardings)
  to_hf(Decoder(cfg), restored, tmp_path / "hf")
  _, imported = from_hf(tmp_path / "hf")
  for variables in (restored, imported):
    np.testing.assert_allclose(variables["buffers"]["token_feature"], expected, rtol=1e-5, atol=1e-6)
    assert "token_feature" not in variables["params"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, jax.device_get(after.variables))


def test_create_state_names_the_field_of_a_bad_counts_file(tmp_path):
  cfg = tiny_config("neox", enabled=True, token_kind="frequency")
  path = tmp_path / "counts.npy"
  np.save(path, np.ones((2, 2), np.int64))
  cfg = dataclasses.replace(cfg, ssa=dataclasses.replace(cfg.ssa, feature_path=str(path)))
  with pytest.raises(ConfigError, match=r"config\.model\.ssa\.feature_path: token counts .* expected a 1-D"):
    _state(cfg)


def test_ssmax_fine_tune_from_a_pretrained_model_warns_in_one_line():
  cfg = tiny_config("neox", max_seq_len=64, enabled=True, position_kind="ssmax", position_tau_at_end=1.001)
  variables = jax.device_get(init_variables(cfg, jax.random.PRNGKey(0)))
  with pytest.warns(UserWarning) as record:
    _state(cfg, variables)
  (message,) = [str(w.message) for w in record if "ssmax" in str(w.message)]
  assert "\n" not in message
  assert "tau(2) = 0.1668, tau(64) = 1.001" in message  # s log n with s = 1.001 / log 64: no near-identity start
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # a fresh SSMax model (pre-training) and a 'log' fine-tune: no warning
    _state(cfg)
    _state(tiny_config("neox", enabled=True, position_tau_at_end=1.001),
           jax.device_get(init_variables(tiny_config("neox", enabled=True), jax.random.PRNGKey(0))))


def test_the_model_does_not_import_the_data_layer():
  # The model takes arrays (phi included); formats/hf.py may read tokenizer files, the model package may not.
  code = ("import sys, ssa_jax.model.decoder, ssa_jax.model.params, ssa_jax.model.attention; "
          "print(sorted(m for m in sys.modules if m.startswith('ssa_jax.data')))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.stdout.strip() == "[]", out.stdout
