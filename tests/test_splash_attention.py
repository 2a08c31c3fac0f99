"""The splash (Pallas) kernel, run in interpret mode on the CPU, against XLA's attention: forward and gradients,
MHA and GQA, packed rows, unaligned lengths, the whole decoder with SSA's kinds, and under a sharded mesh."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from ssa_jax.errors import ConfigError
from ssa_jax.model.kernels import kernel_implementation
from ssa_jax.model.config import ModelConfig, SSAConfig
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.params import init_variables
from ssa_jax.model.splash import fit_block, splash_attention
from tiny_models import random_buffers, with_random_temperatures

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")


def _qkv(B, T, H, K, D, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(ks[0], (B, T, H, D)), jax.random.normal(ks[1], (B, T, K, D)),
          jax.random.normal(ks[2], (B, T, K, D)))


def _reference(q, k, v, segment_ids=None):
  """Plain softmax attention written out: causal, and within a segment when segment ids are given."""
  B, T, H, D = q.shape
  k, v = (jnp.repeat(x, H // x.shape[2], axis=2) for x in (k, v))
  logits = jnp.einsum("bthd,bshd->bhts", q, k, precision="highest") / np.sqrt(D)
  mask = jnp.tril(jnp.ones((T, T), bool))[None]
  if segment_ids is not None:
    mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
  logits = jnp.where(mask[:, None], logits, -jnp.inf)
  return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, axis=-1), v, precision="highest")


def _out_and_grads(attn, q, k, v):
  """attn(q, k, v) and the gradients (dq, dk, dv) of a loss that weighs every output differently."""
  w = jnp.cos(jnp.arange(q.size, dtype=jnp.float32).reshape(q.shape))

  def loss(q, k, v):
    out = attn(q, k, v)
    return (out * w).sum(), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return out, grads


def _assert_close(a, b, tol):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# MHA also runs through the whole decoder below (shared-yarn, frequency-ssmax), hence slow here.
@pytest.mark.parametrize("heads,kv_heads,head_dim", [pytest.param(4, 4, 64, marks=pytest.mark.slow), (4, 2, 128)],
                         ids=["mha", "gqa"])
def test_forward_and_gradients_equal_xla(heads, kv_heads, head_dim):
  q, k, v = _qkv(2, 256, heads, kv_heads, head_dim)
  splash = lambda q, k, v: splash_attention(q, k, v, block_q=128, block_kv=128, interpret=True)
  xla = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
  (out_s, grads_s), (out_x, grads_x) = _out_and_grads(splash, q, k, v), _out_and_grads(xla, q, k, v)
  _assert_close(out_s, out_x, 2e-5)
  for g_s, g_x in zip(grads_s, grads_x):  # dq, dk (summed over each group's q heads under GQA), dv
    _assert_close(g_s, g_x, 1e-4)


def test_packed_rows_and_an_unaligned_length_follow_the_segments():
  # 200 tokens (padded to 256 inside) packed as three documents in row 0 and two in row 1.
  q, k, v = _qkv(2, 200, 2, 1, 64, seed=1)
  seg = np.zeros((2, 200), np.int32)
  seg[0, 70:], seg[0, 150:], seg[1, 130:] = 1, 2, 1
  seg = jnp.asarray(seg)
  splash = lambda q, k, v: splash_attention(q, k, v, block_q=512, block_kv=512, segment_ids_BT=seg,
                                            interpret=True)
  ref = lambda q, k, v: _reference(q, k, v, seg)
  (out_s, grads_s), (out_r, grads_r) = _out_and_grads(splash, q, k, v), _out_and_grads(ref, q, k, v)
  _assert_close(out_s, out_r, 2e-5)
  for g_s, g_r in zip(grads_s, grads_r):
    _assert_close(g_s, g_r, 1e-4)
  # The segments matter: attending across documents would give other outputs.
  assert np.abs(np.asarray(_reference(q, k, v) - out_r)[:, 70:]).max() > 1e-2


def _decoder_config(family, num_kv_heads, **ssa):
  extras = dict(rotary_pct=0.25, parallel_residual=True) if family == "neox" else {}
  return ModelConfig(family=family, vocab_size=64, d_model=128, num_layers=1, num_heads=2, num_kv_heads=num_kv_heads,
                     mlp_dim=64, max_seq_len=128, ssa=SSAConfig(enabled=True, **ssa), splash_block_q=128,
                     splash_block_kv=128, **extras).validate()


@pytest.mark.parametrize("family,num_kv_heads,ssa", [
    ("llama", 1, dict(token_kind="mlp", position_kind="log", key=True)),  # GQA, SSA on q, k and v
    ("neox", 2, dict(token_kind="shared", position_kind="yarn")),  # weight sharing, YaRN
    ("llama", 2, dict(token_kind="frequency", position_kind="ssmax")),  # token frequency, Scalable-Softmax
    # learned positions, a constant logit scale; slow only to keep this file near half a minute
    pytest.param("gpt2", 2, dict(token_kind="mlp", position_kind="constant"), marks=pytest.mark.slow),
], ids=["mlp-log-gqa", "shared-yarn", "frequency-ssmax", "mlp-constant"])
def test_decoder_loss_and_parameter_gradients_equal_xla(family, num_kv_heads, ssa):
  cfg_xla = dataclasses.replace(_decoder_config(family, num_kv_heads, **ssa), attention_impl="xla")
  cfg_splash = dataclasses.replace(cfg_xla, attention_impl="splash")
  params = with_random_temperatures(init_variables(cfg_xla, jax.random.PRNGKey(0))["params"], seed=3)
  buffers = random_buffers(cfg_xla, seed=4)
  tokens = jnp.asarray(np.random.default_rng(5).integers(0, cfg_xla.vocab_size, (2, 129)))

  def loss_and_grads(cfg):
    def loss(p):
      logits = Decoder(cfg).apply({"params": p, "buffers": buffers}, tokens[:, :-1])
      logp = jax.nn.log_softmax(logits, axis=-1)
      return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()
    return jax.jit(jax.value_and_grad(loss))(params)

  (loss_s, grads_s), (loss_x, grads_x) = loss_and_grads(cfg_splash), loss_and_grads(cfg_xla)
  np.testing.assert_allclose(float(loss_s), float(loss_x), rtol=1e-5)
  flat_s, flat_x = jax.tree_util.tree_leaves_with_path(grads_s), jax.tree_util.tree_leaves(grads_x)
  largest = max(float(np.abs(np.asarray(g)).max()) for g in flat_x)
  temperature_grads = 0
  for (path, g_s), g_x in zip(flat_s, flat_x):
    # Each leaf to 2e-4 of its own size; a leaf whose gradient nearly cancels over the batch (an SSA scalar can
    # sum +-3e-3 to 3e-6) to 2e-4 of a thousandth of the largest gradient, float32 summation noise being larger.
    scale = max(float(np.abs(np.asarray(g_x)).max()), 1e-3 * largest)
    np.testing.assert_allclose(np.asarray(g_s) / scale, np.asarray(g_x) / scale, atol=2e-4,
                               err_msg=jax.tree_util.keystr(path))
    temperature_grads += "ssa_" in jax.tree_util.keystr(path) and scale > 1e-5
  assert temperature_grads > 0  # the SSA parameters are trained through the kernel


@needs_8
@pytest.mark.parametrize("packed", [False, True])
def test_under_a_data_x_tensor_mesh_each_device_runs_its_rows_and_heads(packed):
  mesh = jax.make_mesh((4, 1, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
  q, k, v = _qkv(4, 256, 4, 2, 64, seed=2)
  spec = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
  q, k, v = (jax.device_put(x, spec) for x in (q, k, v))
  seg = jnp.asarray(np.arange(256)[None, :] >= np.array([[0], [50], [128], [200]]), jnp.int32) if packed else None
  splash = lambda q, k, v: splash_attention(q, k, v, block_q=128, block_kv=128, segment_ids_BT=seg, interpret=True)
  with jax.set_mesh(mesh):
    lowered = jax.jit(splash).lower(q, k, v).as_text()
    out_s, grads_s = _out_and_grads(splash, q, k, v)
  # The kernel runs inside shard_map (Shardy's manual computation), rows over data, heads over tensor, on
  # (4 / 4 rows, 4 / 2 heads) per device.
  assert "sdy.manual_computation" in lowered and '[{"data", "fsdp"}, {"tensor"}, {}, {}]' in lowered
  assert "tensor<1x2x256x64xf32>" in lowered
  out_r, grads_r = _out_and_grads(lambda q, k, v: _reference(q, k, v, seg), q, k, v)
  _assert_close(out_s, out_r, 2e-5)
  for g_s, g_r in zip(grads_s, grads_r):
    _assert_close(g_s, g_r, 1e-4)


def test_auto_picks_splash_on_tpu_and_splash_is_refused_on_gpu():
  cfg = ModelConfig(family="llama", vocab_size=64, d_model=32, num_layers=1, num_heads=4, mlp_dim=48,
                    max_seq_len=32, dtype="bfloat16").validate()
  assert kernel_implementation(cfg, backend="tpu") == "splash"
  assert kernel_implementation(cfg, backend="gpu") == "cudnn"
  assert kernel_implementation(cfg, backend="cpu") == "xla"
  splash = dataclasses.replace(cfg, attention_impl="splash")
  assert kernel_implementation(splash, backend="cpu") == "splash"  # interpret mode, for tests
  with pytest.raises(ConfigError, match=r"model\.attention_impl: 'splash' is a TPU kernel"):
    kernel_implementation(splash, backend="gpu")


def test_the_platform_comes_from_the_mesh_traced_under():
  # An ahead-of-time TPU compile on a CPU host: jax's default backend is the CPU, the mesh's devices are TPUs.
  cfg = ModelConfig(family="llama", vocab_size=64, d_model=32, num_layers=1, num_heads=4, mlp_dim=48,
                    max_seq_len=32).validate()
  cpu = jax.make_mesh((1,), ("data",)).abstract_mesh.abstract_device
  tpu = dataclasses.replace(cpu, device_kind="TPU v5", platform="tpu")
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("data",), abstract_device=tpu)):
    assert kernel_implementation(cfg) == "splash"
  assert kernel_implementation(cfg) == "xla"


@pytest.mark.parametrize("block,seq_len,expected", [(512, 2048, 512), (512, 256, 256), (512, 640, 128),
                                                    (1024, 1536, 768)])
def test_blocks_are_clipped_to_divide_the_sequence(block, seq_len, expected):
  assert fit_block(block, seq_len) == expected
