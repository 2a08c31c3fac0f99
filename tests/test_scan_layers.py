"""config.model.scan_layers: scanned and unrolled layers give the same logits, gradients and cached decoding;
HF import / export, checkpoints, sharding and the optimizer's decay masks work with either layout."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec as P

from ssa_jax.errors import ConfigError
from ssa_jax.formats import checkpoint
from ssa_jax.model.decoder import Decoder, init_cache
from ssa_jax.model.params import boxed_variable_shapes, init_variables, stack_layers, unstack_layers, variable_shardings
from ssa_jax.runtime import sharding
from ssa_jax.train.optim import param_labels
from tiny_models import tiny_config, with_random_temperatures


def _pair(family, **ssa):
  cfg = tiny_config(family, **ssa)
  params = with_random_temperatures(init_variables(cfg, jax.random.PRNGKey(0))["params"])
  return cfg, params, dataclasses.replace(cfg, scan_layers=True), stack_layers(params, cfg.num_layers)


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_scanned_and_unrolled_give_the_same_logits_and_gradients(family):
  cfg, params, scfg, sparams = _pair(family, enabled=True, token_kind="shared", key=True)
  assert set(sparams) >= {"layers"} and "layers_0" not in sparams
  assert jax.tree_util.tree_structure(sparams) == jax.tree_util.tree_structure(
      init_variables(scfg, jax.random.PRNGKey(1))["params"])
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12))
  np.testing.assert_allclose(np.asarray(Decoder(scfg).apply({"params": sparams}, tokens)),
                             np.asarray(Decoder(cfg).apply({"params": params}, tokens)), atol=1e-5, rtol=1e-5)

  def grads(c, p):
    return jax.grad(lambda q: Decoder(c).apply({"params": q}, tokens).std())(p)

  g_unrolled = grads(cfg, params)
  g_scanned = unstack_layers(grads(dataclasses.replace(scfg, remat="dots"), sparams), cfg.num_layers)
  flat_u, flat_s = traverse_util.flatten_dict(g_unrolled), traverse_util.flatten_dict(g_scanned)
  assert flat_u.keys() == flat_s.keys()
  for k in flat_u:
    np.testing.assert_allclose(np.asarray(flat_s[k]), np.asarray(flat_u[k]), atol=1e-6, rtol=1e-4, err_msg=str(k))


def test_scanned_kv_cache_decoding_matches_the_full_forward():
  _, _, scfg, sparams = _pair("llama", enabled=True, token_kind="mlp", key=True)
  model = Decoder(scfg)
  tokens = np.random.default_rng(1).integers(0, scfg.vocab_size, (2, 9))
  full = np.asarray(model.apply({"params": sparams}, tokens))
  cache = init_cache(scfg, batch_size=2, max_len=12)
  assert cache.max_len == 12
  pieces = []
  logits, cache = model.apply({"params": sparams}, tokens[:, :4], cache=cache)
  pieces.append(np.asarray(logits))
  for t in range(4, 9):
    logits, cache = model.apply({"params": sparams}, tokens[:, t:t + 1], cache=cache)
    pieces.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(pieces, 1), full, atol=2e-5, rtol=1e-5)


def test_hf_import_and_export_with_scanned_layers(tmp_path):
  from hf_models import hf_logits, make_hf_model
  from ssa_jax.formats.hf import from_hf, to_hf

  hf_model = make_hf_model("neox", tmp_path / "hf")
  tokens = np.random.default_rng(2).integers(0, hf_model.config.vocab_size, (2, 20))
  model, variables = from_hf(tmp_path / "hf", scan_layers=True)
  assert model.config.scan_layers and "layers" in variables["params"]
  ref = hf_logits(hf_model, tokens)
  np.testing.assert_allclose(np.asarray(model.apply(variables, tokens)), ref, atol=1e-4)
  to_hf(model, variables, tmp_path / "export")
  _, again = from_hf(tmp_path / "export")  # unrolled again
  flat_a = traverse_util.flatten_dict(again["params"])
  flat_b = traverse_util.flatten_dict(unstack_layers(variables["params"], model.config.num_layers))
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]))


def test_checkpoint_records_the_layout_and_refuses_the_other(tmp_path):
  cfg, params, scfg, sparams = _pair("neox", enabled=True)
  checkpoint.save_model(tmp_path / "ckpt", scfg, {"params": sparams, "buffers": {}})
  model, restored, _ = checkpoint.load_model(tmp_path / "ckpt")
  assert model.config.scan_layers
  tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, (1, 8))
  np.testing.assert_allclose(np.asarray(model.apply(restored, tokens)),
                             np.asarray(Decoder(cfg).apply({"params": params}, tokens)), atol=1e-5)
  import orbax.checkpoint as ocp

  with ocp.CheckpointManager((tmp_path / "ckpt").absolute()) as mngr:
    with pytest.raises(ConfigError, match=r"config\.model\.scan_layers: False here, but checkpoint 0 .* scanned"):
      checkpoint.check_layer_layout(mngr, 0, params)
    checkpoint.check_layer_layout(mngr, 0, sparams)  # the same layout passes


def test_stacked_vectors_keep_no_weight_decay():
  cfg_u, params, cfg_s, sparams = _pair("llama", enabled=True)
  labels_u = traverse_util.flatten_dict(param_labels(params, cfg_u, temperatures_only=False))
  labels_s = traverse_util.flatten_dict(param_labels(sparams, cfg_s, temperatures_only=False))
  for path, label in labels_u.items():
    if path[0].startswith("layers_"):
      assert labels_s[("layers",) + path[1:]] == label, path


def test_scanned_params_shard_with_the_layer_axis_replicated():
  if jax.device_count() < 8:
    pytest.skip("needs the forced 8-device CPU mesh (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  scfg = dataclasses.replace(tiny_config("llama", enabled=True), scan_layers=True)
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2, num_devices=8))
  rules = sharding.rules_from_config([["vocab", "tensor"], ["embed", "fsdp"], ["mlp", "tensor"],
                                      ["heads", "tensor"], ["kv_heads", "tensor"], ["layers", None]])
  shardings = variable_shardings(boxed_variable_shapes(scfg), mesh, rules)["params"]
  assert shardings["layers"]["attn"]["q"]["kernel"].spec == P(None, "fsdp", "tensor", None)
  assert shardings["layers"]["attn"]["ssa_q"]["alpha"].spec == P(None, "tensor")
  params = jax.jit(lambda r: init_variables(scfg, r)["params"], out_shardings=shardings)(jax.random.PRNGKey(0))
  tokens = jnp.zeros((2, 8), jnp.int32)
  assert np.isfinite(np.asarray(Decoder(scfg).apply({"params": params}, tokens))).all()


def test_analyses_read_scanned_models_as_unrolled_ones():
  from ssa_jax.analysis import norms
  from ssa_jax.analysis.temperatures import token_temperatures

  cfg, params, scfg, sparams = _pair("neox", enabled=True, token_kind="mlp")
  ids = [3, 1, 4, 1, 5, 9, 2, 6]
  np.testing.assert_allclose(token_temperatures(Decoder(scfg), {"params": sparams}, ids),
                             token_temperatures(Decoder(cfg), {"params": params}, ids), rtol=1e-5)
  tokens = np.asarray([ids], np.int32)
  unrolled, scanned = (norms.analyse_tokens(Decoder(c), {"params": p}, tokens)
                       for c, p in ((cfg, params), (scfg, sparams)))
  for key in ("spec_raw", "spec_eff", "tau_q", "spikiness", "opnorm"):
    np.testing.assert_allclose(scanned[key], unrolled[key], rtol=1e-4, atol=1e-6, err_msg=key)
