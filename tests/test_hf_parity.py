"""Our decoders against transformers: import, export, and the SSA round trip."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import traverse_util

from hf_models import hf_logits, make_hf_model
from ssa_jax.formats.hf import from_hf, to_hf
from ssa_jax.model.config import SSAConfig
from ssa_jax.model.decoder import Decoder

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
CASES = {
    "gpt2": ("gpt2", {}),
    "neox_parallel": ("neox", {"use_parallel_residual": True}),
    "neox_sequential": ("neox", {"use_parallel_residual": False}),
    "llama_gqa_untied": ("llama", {}),
    "llama3_rope_tied": ("llama", {"rope_scaling": LLAMA3_ROPE, "rope_theta": 500000.0, "tie_word_embeddings": True}),
}


def _tokens(vocab, shape=(2, 48), seed=0):
  return np.random.default_rng(seed).integers(0, vocab, shape)


@pytest.fixture(params=sorted(CASES))
def hf_case(request, tmp_path):
  kind, overrides = CASES[request.param]
  model = make_hf_model(kind, tmp_path / "hf", **overrides)
  return request.param, model, tmp_path / "hf"


def test_logits_equal_transformers_and_export_round_trips(hf_case, tmp_path):
  name, hf_model, hf_dir = hf_case
  tokens = _tokens(hf_model.config.vocab_size)
  model, variables = from_hf(hf_dir)
  cfg = model.config
  # The config switches that make each case what it claims to be.
  if name.startswith("neox"):
    assert cfg.rotary_dim == cfg.head_dim // 4
    assert cfg.parallel_residual == (name == "neox_parallel")
  if name == "llama3_rope_tied":
    assert cfg.rope_scaling is not None and cfg.tie_embeddings and cfg.rope_theta == 500000.0
  if name.startswith("llama"):
    assert cfg.num_kv_heads == 2 < cfg.num_heads

  ref = hf_logits(hf_model, tokens)
  ours = np.asarray(model.apply(variables, tokens))
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)

  import transformers

  out_dir = to_hf(model, variables, tmp_path / "export")
  again = transformers.AutoModelForCausalLM.from_pretrained(out_dir).eval()
  np.testing.assert_allclose(hf_logits(again, tokens), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("token_kind,position_kind", [("mlp", "log"), ("shared", "log"), ("shared", "ssmax"),
                                                     ("frequency", "log")])
def test_ssa_model_round_trips_exactly(tmp_path, token_kind, position_kind, capsys):
  make_hf_model("llama", tmp_path / "hf")
  ssa = SSAConfig(enabled=True, token_kind=token_kind, position_kind=position_kind, key=position_kind == "log")
  model, variables = from_hf(tmp_path / "hf", ssa=ssa, rng_seed=3)
  # Give the zero-initialised temperature weights (and phi, a buffer) values so that "identical" means something.
  flat = traverse_util.flatten_dict(variables)
  changed = lambda p: "/ssa_" in "/".join(p) or p[0] == "buffers"
  variables = traverse_util.unflatten_dict({
      p: np.random.default_rng(i).normal(size=v.shape).astype(np.float32) if changed(p) else v
      for i, (p, v) in enumerate(flat.items())})

  to_hf(model, variables, tmp_path / "export")
  assert "VANILLA" in capsys.readouterr().err
  model2, variables2 = from_hf(tmp_path / "export")
  assert model2.config == model.config
  flat1, flat2 = traverse_util.flatten_dict(variables), traverse_util.flatten_dict(variables2)
  assert flat1.keys() == flat2.keys() and any(p[0] == "buffers" for p in flat1) == (token_kind == "frequency")
  for p in flat1:
    np.testing.assert_array_equal(np.asarray(flat1[p]), np.asarray(flat2[p]), err_msg="/".join(p))
  tokens = _tokens(model.config.vocab_size)
  np.testing.assert_array_equal(model.apply(variables, tokens), model2.apply(variables2, tokens))


def test_ssa_export_puts_the_temperatures_where_transformers_does_not_look(tmp_path, capsys):
  """ssa.* tensors go to ssa.safetensors: a vanilla transformers load reports no unexpected (or missing) key and
  gives the vanilla logits; from_hf restores them from there, and from nowhere else."""
  import shutil

  import transformers
  from safetensors.numpy import load_file, save_file

  hf_model = make_hf_model("llama", tmp_path / "hf")
  model, variables = from_hf(tmp_path / "hf", ssa=SSAConfig(enabled=True), rng_seed=1)
  flat = traverse_util.flatten_dict(variables)
  variables = traverse_util.unflatten_dict(  # non-zero temperature weights, so that losing them would show
      {p: np.full(v.shape, 0.3, np.float32) if "/ssa_" in "/".join(p) else v for p, v in flat.items()})
  out = to_hf(model, variables, tmp_path / "export")
  capsys.readouterr()
  standard, ssa = load_file(out / "model.safetensors"), load_file(out / "ssa.safetensors")
  assert ssa and all(k.startswith("ssa.") for k in ssa) and not any(k.startswith("ssa.") for k in standard)
  vanilla, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
  assert list(info["unexpected_keys"]) == [] and list(info["missing_keys"]) == []
  tokens = _tokens(hf_model.config.vocab_size)
  np.testing.assert_allclose(hf_logits(vanilla.eval(), tokens), hf_logits(hf_model, tokens), atol=1e-4, rtol=0)

  def same_model(directory):
    model2, variables2 = from_hf(directory)
    assert model2.config == model.config
    flat1, flat2 = traverse_util.flatten_dict(variables), traverse_util.flatten_dict(variables2)
    assert flat1.keys() == flat2.keys()
    for p in flat1:
      np.testing.assert_array_equal(np.asarray(flat1[p]), np.asarray(flat2[p]), err_msg="/".join(p))

  same_model(out)
  one_file = tmp_path / "one_file"  # the temperatures inside model.safetensors: not an export of ours
  shutil.copytree(out, one_file)
  save_file({**standard, **ssa}, one_file / "model.safetensors", metadata={"format": "pt"})
  (one_file / "ssa.safetensors").unlink()
  with pytest.raises(KeyError, match="config.json has an `ssa` block but there is no ssa.safetensors"):
    from_hf(one_file)
  to_hf(Decoder(dataclasses.replace(model.config, ssa=SSAConfig())), _without_ssa(variables), out)  # vanilla over it
  assert not (out / "ssa.safetensors").exists()


def _without_ssa(variables):
  flat = traverse_util.flatten_dict(variables)
  return traverse_util.unflatten_dict({p: v for p, v in flat.items() if "/ssa_" not in "/".join(p)})


def test_sharded_checkpoint_index_is_read(tmp_path):
  hf_model = make_hf_model("gpt2", tmp_path / "hf")
  hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
  assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
  model, variables = from_hf(tmp_path / "sharded")
  tokens = _tokens(hf_model.config.vocab_size)
  np.testing.assert_allclose(model.apply(variables, tokens), hf_logits(hf_model, tokens), atol=1e-4)


def test_unsupported_architecture_is_named(tmp_path):
  import json

  make_hf_model("gpt2", tmp_path / "hf")
  cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
  cfg["architectures"] = ["MambaForCausalLM"]
  (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match="MambaForCausalLM"):
    from_hf(tmp_path / "hf")


def test_missing_tensor_is_named(tmp_path):
  from safetensors.numpy import load_file, save_file

  make_hf_model("llama", tmp_path / "hf")
  path = tmp_path / "hf" / "model.safetensors"
  tensors = load_file(path)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, path, metadata={"format": "pt"})
  with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
    from_hf(tmp_path / "hf")


def test_export_of_a_config_transformers_cannot_hold_is_refused(tmp_path):
  """GPT-NeoX in transformers always has biases: a bias-free NeoX config cannot be exported as one."""
  from ssa_jax.model.config import ModelConfig
  from ssa_jax.model.params import init_variables

  cfg = ModelConfig(family="neox", vocab_size=64, d_model=32, num_layers=1, num_heads=4, mlp_dim=64,
                    max_seq_len=16, rotary_pct=0.25).validate()
  with pytest.raises(ValueError, match=r"gpt_neox\.layers\.0\..*bias"):
    to_hf(cfg, init_variables(cfg, jax.random.PRNGKey(0)), tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_cli_import_then_export_keeps_logits(tmp_path):
  import transformers

  from ssa_jax.formats.hf import main

  hf_model = make_hf_model("neox", tmp_path / "hf")
  assert main(["import", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
  assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "back")]) == 0
  again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
  tokens = _tokens(hf_model.config.vocab_size)
  np.testing.assert_allclose(hf_logits(again, tokens), hf_logits(hf_model, tokens), atol=1e-5)
