"""FLOPs per token for MFU: the model's matmuls and SSA's temperature matmuls, counted from the parameter shapes."""

import dataclasses

import jax
import numpy as np
import pytest

from ssa_jax.model.params import param_shapes, ssa_groups
from ssa_jax.train.metrics import decoder_flops_per_token, mfu, ssa_flops_per_token, training_flops_per_token
from tiny_models import tiny_config

SEQ = 32


def _leaves(cfg):
  """('/'-joined path, shape) of every parameter of an initialised model."""
  flat = jax.tree_util.tree_flatten_with_path(param_shapes(cfg))[0]
  return [("/".join(str(getattr(k, "key", k)) for k in path), leaf.shape) for path, leaf in flat]


def _matmul_weights(cfg, ssa: bool) -> int:
  """Weights used once per token in a matmul: every kernel (parameters of 2+ axes that are not biases: not norms
  or per-head scalars), SSA's or the rest; the embeddings are lookups, except as the tied LM head."""
  total, groups = 0, ssa_groups(cfg)
  for name, shape in _leaves(cfg):
    if len(shape) < 2 or name.endswith("/bias") or (tuple(name.split("/")) in groups) != ssa:
      continue
    if name.startswith(("embed/", "pos_embed/")) and not (name == "embed/embedding" and cfg.tie_embeddings):
      continue
    total += int(np.prod(shape))
  return total


@pytest.mark.parametrize("family", ["neox", "gpt2", "llama"])
def test_model_flops_count_every_matmul_weight_and_causal_attention(family):
  cfg = tiny_config(family, enabled=True, token_kind="mlp")
  # 2 FLOPs a weight forward and 4 backward; the attention matmuls QK^T and PV cost 2 x 2 x D per query and key,
  # over the causal half of the T x T scores on average, forward and backward (x3).
  attention = 3 * 2 * 2 * cfg.head_dim * (SEQ / 2) * cfg.num_heads * cfg.num_layers
  expected = 6 * _matmul_weights(cfg, ssa=False) + attention
  assert decoder_flops_per_token(cfg, SEQ) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("ssa", [
    dict(token_kind="mlp"),
    dict(token_kind="mlp", key=True),  # llama's k / v have 2 KV heads for 4 query heads
    dict(token_kind="shared", weight_sharing_scope="layer"),
    dict(token_kind="shared", weight_sharing_scope="head", key=True),
    dict(token_kind="frequency"),
    dict(token=False, position_kind="log"),
])
def test_ssa_flops_count_every_temperature_matmul_weight(ssa):
  cfg = tiny_config("llama", enabled=True, **ssa)
  assert ssa_flops_per_token(cfg, SEQ) == pytest.approx(6 * _matmul_weights(cfg, ssa=True), rel=1e-12)
  if ssa.get("token_kind") in ("mlp", "shared"):
    assert ssa_flops_per_token(cfg, SEQ) > 0


@pytest.mark.parametrize("family,attention_kind", [("neox", "softmax"), ("llama", "softmax"), ("neox", "gated_head"),
                                                   ("llama", "gated_element")])
def test_training_flops_count_the_decoders_and_the_temperatures_matmul_weights(family, attention_kind):
  """The figure MFU and the dry run use: every matmul weight of the model, SSA's and an output gate's included,
  and the attention."""
  cfg = dataclasses.replace(tiny_config(family, enabled=True, token_kind="mlp", key=True),
                            attention_kind=attention_kind).validate()
  attention = 3 * 2 * 2 * cfg.head_dim * (SEQ / 2) * cfg.num_heads * cfg.num_layers
  weights = _matmul_weights(cfg, ssa=False) + _matmul_weights(cfg, ssa=True)
  assert _matmul_weights(cfg, ssa=True) > 0
  assert training_flops_per_token(cfg, SEQ) == pytest.approx(6 * weights + attention, rel=1e-12)


def test_vanilla_has_no_ssa_flops_and_mfu_needs_a_peak():
  cfg = tiny_config("neox")
  assert ssa_flops_per_token(cfg, SEQ) == 0.0
  assert ssa_flops_per_token(dataclasses.replace(cfg, ssa=dataclasses.replace(cfg.ssa, enabled=False)), SEQ) == 0
  assert mfu(1000.0, 1e9, 1e12, 2) == pytest.approx(0.5)
  assert mfu(1000.0, 1e9, None, 2) is None
