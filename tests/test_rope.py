"""RoPE's two forms (rope_by_slices, rope_by_matmul) against rotate-half written out in float64 numpy
(transformers' formula), and against each other bit for bit; apply_rope takes the matmul on TPU only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssa_jax.model import layers
from ssa_jax.model.config import ModelConfig, RopeScaling
from ssa_jax.model.layers import apply_rope, rope_by_matmul, rope_by_slices, rope_inv_freq

SCALING = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)
CASES = {"quarter": (0.25, None), "half": (0.5, None), "full": (1.0, None), "full-llama3-scaling": (1.0, SCALING)}


def _cfg(rotary_pct: float, scaling: RopeScaling | None = None) -> ModelConfig:
  return ModelConfig(family="neox", vocab_size=64, d_model=64, num_layers=1, num_heads=2, mlp_dim=64,
                     max_seq_len=4096, rotary_pct=rotary_pct, rope_scaling=scaling).validate()


def _numpy_rotate_half(x_BTHD: np.ndarray, positions_BT: np.ndarray, rot: int, inv_freq: np.ndarray) -> np.ndarray:
  # The angle is a float32 product, as in transformers (and here): at position 4000 a float64 angle differs by
  # about 2e-4 rad.
  angles = (positions_BT[..., None, None].astype(np.float32) * inv_freq.astype(np.float32)).astype(np.float64)
  x1, x2, rest = x_BTHD[..., : rot // 2], x_BTHD[..., rot // 2 : rot], x_BTHD[..., rot:]
  return np.concatenate([x1 * np.cos(angles) - x2 * np.sin(angles), x2 * np.cos(angles) + x1 * np.sin(angles), rest],
                        axis=-1)


def _inputs(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  return rng.normal(size=(2, 7, 2, cfg.head_dim)), np.stack([np.arange(7), rng.integers(0, 4000, size=7)])


@pytest.mark.parametrize("rope", [rope_by_slices, rope_by_matmul], ids=["slices", "matmul"])
@pytest.mark.parametrize("case", list(CASES))
def test_rope_equals_numpy_rotate_half(rope, case):
  cfg = _cfg(*CASES[case])
  x, positions = _inputs(cfg)
  inv_freq = np.asarray(rope_inv_freq(cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling))
  want = _numpy_rotate_half(x, positions, cfg.rotary_dim, inv_freq)
  got = rope(jnp.asarray(x, jnp.float32), jnp.asarray(positions), cfg)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_rope_forms_agree_bit_for_bit(case, dtype):
  cfg = _cfg(*CASES[case])
  x, positions = (jnp.asarray(a) for a in _inputs(cfg))
  by_slices = jax.jit(rope_by_slices, static_argnums=2)(x.astype(dtype), positions, cfg)
  by_matmul = jax.jit(rope_by_matmul, static_argnums=2)(x.astype(dtype), positions, cfg)
  np.testing.assert_array_equal(np.asarray(by_matmul, np.float32), np.asarray(by_slices, np.float32))


@pytest.mark.parametrize("platform,has_matmul", [("tpu", True), ("cpu", False), ("gpu", False)])
def test_apply_rope_takes_the_matmul_on_tpu_only(monkeypatch, platform, has_matmul):
  monkeypatch.setattr(layers, "traced_platform", lambda: platform)
  cfg = _cfg(0.25)
  jaxpr = jax.make_jaxpr(lambda x, p: apply_rope(x, p, cfg))(jnp.ones((1, 3, 2, cfg.head_dim)),
                                                             jnp.zeros((1, 3), jnp.int32))
  assert ("dot_general" in str(jaxpr)) == has_matmul


def test_apply_rope_without_rotary_dims_is_identity():
  cfg = _cfg(0.0)
  x = jnp.arange(2 * 3 * 2 * cfg.head_dim, dtype=jnp.float32).reshape(2, 3, 2, cfg.head_dim)
  assert cfg.rotary_dim == 0
  np.testing.assert_array_equal(apply_rope(x, jnp.zeros((2, 3), jnp.int32), cfg), x)
