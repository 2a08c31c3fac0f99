"""Attention methods (config.model.attention_kind, docs/methods.md): the output gate against numpy and against
transformers' Qwen3-Next attention, KV-cache decoding, splash vs XLA, parameter counts, comparison variants and
the HF export's refusal."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from transformers.models.qwen3_next import modeling_qwen3_next as qwen3_next

from configs import base as base_configs
from configs import models
from ssa_jax.errors import ConfigError
from ssa_jax.experiments.compare.cli import variant_config
from ssa_jax.formats.hf import to_hf
from ssa_jax.model.attention import SelectiveSelfAttention
from ssa_jax.model.config import ATTENTION_KINDS, ModelConfig, SSAConfig
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.methods import METHODS
from ssa_jax.model.params import init_variables, param_counts
from tiny_models import cached_decode_logits, tiny_config, with_random_temperatures

GATED = ["gated_head", "gated_element"]


def _with_random_gates(params, seed: int = 0):
  """Every output-gate parameter drawn from N(0, 0.5^2): gates spread over (0, 1), not all near 0.5."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      p: jnp.asarray(rng.normal(scale=0.5, size=v.shape), jnp.float32) if "output_gate" in p else v
      for p, v in flat.items()})


def _attention_layer(cfg: ModelConfig, x_BTd: np.ndarray, seed: int = 0):
  """(params, output) of one SelectiveSelfAttention on x, every parameter random."""
  layer = SelectiveSelfAttention(cfg)
  positions_BT = jnp.broadcast_to(jnp.arange(x_BTd.shape[1]), x_BTd.shape[:2])
  params = layer.init(jax.random.PRNGKey(seed), x_BTd, positions_BT)["params"]
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(scale=0.3, size=a.shape), jnp.float32),
                                  nn.meta.unbox(params))
  out, _ = layer.apply({"params": params}, x_BTd, positions_BT)
  return params, np.asarray(out)


def _numpy_gated_attention(p, x_BTd: np.ndarray, kind: str) -> np.ndarray:
  """Qiu et al.'s equations without RoPE (GPT-2's attention): Y = softmax(q k^T / sqrt(D) + causal) v per head,
  Y' = Y * sigmoid(x W_g + b_g), out = Y' W_o + b_o."""
  f = lambda name: {k: np.asarray(v, np.float64) for k, v in p[name].items()}  # noqa: E731
  q, k, v, o, g = f("q"), f("k"), f("v"), f("o"), f("output_gate")
  x = x_BTd.astype(np.float64)
  q_BTHD, k_BTHD, v_BTHD = (np.einsum("btd,dhe->bthe", x, w["kernel"]) + w["bias"] for w in (q, k, v))
  T, D = x.shape[1], q_BTHD.shape[-1]
  logits_BHTS = np.einsum("bthe,bshe->bhts", q_BTHD, k_BTHD) / np.sqrt(D)
  logits_BHTS = np.where(np.tril(np.ones((T, T), bool)), logits_BHTS, -np.inf)
  probs = np.exp(logits_BHTS - logits_BHTS.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  y_BTHD = np.einsum("bhts,bshe->bthe", probs, v_BTHD)
  z = np.tensordot(x, g["kernel"], axes=([2], [0])) + g["bias"]  # (B, T, H) or (B, T, H, D)
  gate = 1.0 / (1.0 + np.exp(-z))
  y_BTHD = y_BTHD * (gate[..., None] if kind == "gated_head" else gate)
  return np.einsum("bthe,hed->btd", y_BTHD, o["kernel"]) + o["bias"]


@pytest.mark.parametrize("kind", GATED)
def test_gate_equals_the_papers_equations_in_numpy(kind):
  cfg = dataclasses.replace(tiny_config("gpt2"), attention_kind=kind)  # no RoPE inside GPT-2's attention
  x_BTd = np.random.default_rng(1).normal(size=(2, 7, cfg.d_model)).astype(np.float32)
  params, out = _attention_layer(cfg, x_BTd)
  assert params["output_gate"]["kernel"].shape == ((32, 4) if kind == "gated_head" else (32, 4, 8))
  np.testing.assert_allclose(out, _numpy_gated_attention(params, x_BTd, kind), atol=1e-4, rtol=1e-4)


def _qwen3_next_attention(bias: bool, rotary: float):
  """transformers' Qwen3NextAttention, random weights, q / k RMSNorms replaced by the identity (our families have
  none: they are Qwen3-Next's, not part of the gate)."""
  torch.manual_seed(0)
  hf_cfg = qwen3_next.Qwen3NextConfig(
      hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, attention_bias=bias,
      num_hidden_layers=1, max_position_embeddings=64, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                             partial_rotary_factor=rotary))
  hf_cfg._attn_implementation = "eager"
  layer = qwen3_next.Qwen3NextAttention(hf_cfg, layer_idx=0).eval()
  layer.q_norm, layer.k_norm = torch.nn.Identity(), torch.nn.Identity()
  with torch.no_grad():
    for p in layer.parameters():
      p.normal_(0.0, 0.3)
  return hf_cfg, layer


def _ours_from_qwen3_next(layer, H: int, K: int, D: int) -> dict:
  """Our attention parameters from Qwen3-Next's: q_proj's rows are, per head, D query rows then D gate rows."""
  w = lambda lin: lin.weight.detach().numpy()  # noqa: E731  (out, in)
  b = lambda lin: None if lin.bias is None else lin.bias.detach().numpy()  # noqa: E731
  d = w(layer.q_proj).shape[1]
  q_H2Dd = w(layer.q_proj).reshape(H, 2, D, d)
  params = {"q": {"kernel": q_H2Dd[:, 0].transpose(2, 0, 1)},
            "output_gate": {"kernel": q_H2Dd[:, 1].transpose(2, 0, 1)},
            "k": {"kernel": w(layer.k_proj).reshape(K, D, d).transpose(2, 0, 1)},
            "v": {"kernel": w(layer.v_proj).reshape(K, D, d).transpose(2, 0, 1)},
            "o": {"kernel": w(layer.o_proj).reshape(d, H, D).transpose(1, 2, 0)}}
  if layer.q_proj.bias is not None:
    q_bias_H2D = b(layer.q_proj).reshape(H, 2, D)
    params["q"]["bias"], params["output_gate"]["bias"] = q_bias_H2D[:, 0], q_bias_H2D[:, 1]
    params["k"]["bias"], params["v"]["bias"] = b(layer.k_proj).reshape(K, D), b(layer.v_proj).reshape(K, D)
    params["o"]["bias"] = b(layer.o_proj)
  return jax.tree_util.tree_map(jnp.asarray, params)


@pytest.mark.parametrize("bias,rotary", [(False, 1.0), (True, 0.25)], ids=["no-bias-full-rope", "bias-partial-rope"])
def test_gated_element_equals_transformers_qwen3_next_attention(bias, rotary):
  # The attention layer, not the model: Qwen3-Next's decoder (linear-attention layers, MoE MLPs, QK-norm) is no
  # family here. Its layer without QK-norm is ours: GQA, rotate-half RoPE on the first `rotary` of each head.
  hf_cfg, layer = _qwen3_next_attention(bias, rotary)
  cfg = ModelConfig(family="llama", vocab_size=64, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2,
                    mlp_dim=48, max_seq_len=64, rotary_pct=rotary, qkv_bias=bias, out_bias=bias,
                    attention_kind="gated_element").validate()
  x_BTd = np.random.default_rng(2).normal(size=(2, 9, 32)).astype(np.float32)
  positions = torch.arange(9)[None].expand(2, -1)
  x = torch.as_tensor(x_BTd)
  causal = torch.full((9, 9), float("-inf")).triu(1)[None, None]
  with torch.no_grad():
    cos_sin = qwen3_next.Qwen3NextRotaryEmbedding(hf_cfg)(x, positions)
    expected = layer(x, cos_sin, causal)[0].numpy()
  params = _ours_from_qwen3_next(layer, 4, 2, 8)
  out, _ = SelectiveSelfAttention(cfg).apply({"params": params}, x_BTd, jnp.asarray(positions.numpy()))
  np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family,kind", [("llama", "gated_head"), ("neox", "gated_element")])
def test_kv_cache_decoding_matches_full_forward_with_ssa_and_a_gate(family, kind):
  cfg = dataclasses.replace(tiny_config(family, enabled=True, token_kind="mlp", key=True), attention_kind=kind)
  model = Decoder(cfg)
  params = _with_random_gates(with_random_temperatures(init_variables(cfg, jax.random.PRNGKey(0))["params"]))
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 12))
  full = np.asarray(model.apply({"params": params}, tokens))
  cached, _ = cached_decode_logits(model, params, tokens, max_len=16)
  np.testing.assert_allclose(cached, full, atol=2e-5, rtol=1e-5)
  softmax = Decoder(dataclasses.replace(cfg, attention_kind="softmax"))
  without_gate = traverse_util.unflatten_dict({p: v for p, v in traverse_util.flatten_dict(params).items()
                                               if "output_gate" not in p})
  assert np.abs(np.asarray(softmax.apply({"params": without_gate}, tokens)) - full).max() > 1e-2  # the gate acts


def test_splash_equals_xla_for_a_gated_ssa_model():
  cfg_xla = ModelConfig(family="llama", vocab_size=64, d_model=128, num_layers=1, num_heads=2, num_kv_heads=1,
                        mlp_dim=64, max_seq_len=128, ssa=SSAConfig(enabled=True), splash_block_q=128,
                        splash_block_kv=128, attention_impl="xla", attention_kind="gated_element").validate()
  cfg_splash = dataclasses.replace(cfg_xla, attention_impl="splash")
  params = _with_random_gates(with_random_temperatures(init_variables(cfg_xla, jax.random.PRNGKey(0))["params"]))
  tokens = jnp.asarray(np.random.default_rng(5).integers(0, 64, (1, 128)))
  logits = {c.attention_impl: np.asarray(jax.jit(Decoder(c).apply)({"params": params}, tokens))
            for c in (cfg_xla, cfg_splash)}
  np.testing.assert_allclose(logits["splash"], logits["xla"], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,per_layer", [("gated_head", 32 * 4), ("gated_element", 32 * 4 * 8 + 4 * 8)])
def test_parameter_counts_report_the_method_beside_ssa(kind, per_layer):
  ssa = dict(enabled=True, token_kind="shared")
  softmax = param_counts(tiny_config("neox", **ssa))  # NeoX: q has a bias, so the gate has one too
  gated = param_counts(dataclasses.replace(tiny_config("neox", **ssa), attention_kind=kind))
  assert softmax["attention_method_params"] == 0
  assert gated["attention_method_params"] == 2 * (per_layer + (4 if kind == "gated_head" else 0))
  assert gated["params"] == softmax["params"] + gated["attention_method_params"]
  assert gated["ssa_params"] == softmax["ssa_params"] > 0


def test_attention_kind_takes_only_the_methods_that_exist():
  with pytest.raises(ConfigError, match=r"config\.model\.attention_kind: unknown 'diff'; expected one of"):
    dataclasses.replace(tiny_config("llama"), attention_kind="diff").validate()
  assert models.model_config("tiny").attention_kind == "softmax"  # the dataclass default reaches the presets
  # Every config name has its module, every comparison name a config name, and each module its own scope.
  assert tuple(METHODS) == ATTENTION_KINDS
  assert set(models.ATTENTION_VARIANTS.values()) <= set(ATTENTION_KINDS) - {"softmax"}
  names = {cls.layer_name for kind, cls in METHODS.items()}
  assert len(names) == len(set(METHODS.values())) and not names & {"q", "k", "v", "o", "ssa_q", "ssa_k", "ssa_v"}


@pytest.mark.parametrize("kind", ["forgetting", "leviathan"])
def test_an_xla_only_method_refuses_a_fused_kernel_by_name(kind):
  with pytest.raises(ConfigError, match=rf"config\.model\.attention_impl: attention_kind '{kind}' runs XLA"):
    dataclasses.replace(tiny_config("llama"), attention_kind=kind, attention_impl="splash").validate()
  dataclasses.replace(tiny_config("llama"), attention_kind=kind, attention_impl="xla").validate()


def test_differential_attention_refuses_an_odd_number_of_heads():
  with pytest.raises(ConfigError, match=r"config\.model\.num_heads: attention_kind 'differential' pairs heads"):
    dataclasses.replace(tiny_config("llama"), num_kv_heads=1, attention_kind="differential").validate()


def test_comparison_variants_join_an_ssa_preset_and_an_attention_method():
  base = base_configs.get_config("tiny", "vanilla")
  both = variant_config(base, "ssa+gated", 0)
  assert both.model.ssa.enabled and both.model.ssa.token_kind == "mlp" and both.model.attention_kind == "gated_element"
  ws_head = variant_config(base, "ssa_ws+gated_head", 1)
  assert ws_head.model.ssa.token_kind == "shared" and ws_head.model.attention_kind == "gated_head"
  gated = variant_config(base, "gated", 0)
  assert not gated.model.ssa.enabled and gated.model.attention_kind == "gated_element"
  base.model.attention_kind = "gated_head"
  assert variant_config(base, "ssa", 0).model.attention_kind == "softmax"  # a variant names its whole method
  with pytest.raises(ConfigError, match=r"--variants: unknown variant 'gate' in 'ssa\+gate'"):
    variant_config(base, "ssa+gate", 0)
  with pytest.raises(ConfigError, match=r"--variants: 'gated\+gated_head' has more than one"):
    variant_config(base, "gated+gated_head", 0)


def test_hf_export_refuses_an_attention_method(tmp_path):
  cfg = dataclasses.replace(tiny_config("llama"), attention_kind="gated_element")
  with pytest.raises(ConfigError, match=r"config\.model\.attention_kind: 'gated_element' has no stock"):
    to_hf(cfg, init_variables(cfg, jax.random.PRNGKey(0)), tmp_path / "out")
  assert not (tmp_path / "out").exists()
