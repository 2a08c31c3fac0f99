"""The attention kernels: softmax(q k^T / sqrt(D)) v by splash, cuDNN or XLA under the causal mask, and the
explicit-mask rows (attention_weights, weighted_values) that analyses read; and Visibility, which keys each query
sees, in the form every attention method (ssa_jax.model.methods) takes it."""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp

from ssa_jax.errors import ConfigError
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.platform import traced_platform
from ssa_jax.model.splash import splash_attention

Array = jax.Array


@flax.struct.dataclass
class Visibility:
  """Which keys each query sees. Full forward (`mask_BTS` None): causal, and within `segment_ids_BT`'s segments
  when given (packed training windows). Otherwise `mask_BTS` (bool, B may be 1): packed or tree-shaped rows
  (evaluation) or a KV cache's causal mask, the queries then starting at position `cache_index` of the cache."""

  mask_BTS: Array | None = None
  segment_ids_BT: Array | None = None
  cache_index: Array | None = None

  def dense_mask(self, T: int) -> Array:
    """mask_BTS as given, or the full forward's causal (and same-segment) mask (B or 1, T, T)."""
    if self.mask_BTS is not None:
      return self.mask_BTS
    causal_1TT = jnp.tril(jnp.ones((1, T, T), bool))
    if self.segment_ids_BT is None:
      return causal_1TT
    return causal_1TT & (self.segment_ids_BT[:, :, None] == self.segment_ids_BT[:, None, :])


def kernel_implementation(cfg: ModelConfig, backend: str | None = None) -> str:
  """The attention kernel of the causal full forward: 'splash', 'cudnn' or 'xla' ('auto': see the config field).

  `backend` defaults to traced_platform(), so that a TPU program compiled ahead of time on a CPU host gets TPU's
  kernel.
  """
  backend = backend or traced_platform()
  if cfg.attention_impl == "splash" and backend in ("gpu", "cuda", "rocm"):
    raise ConfigError(f"model.attention_impl: 'splash' is a TPU kernel; on {backend} use 'cudnn', 'xla' or 'auto'")
  if cfg.attention_impl != "auto":
    return cfg.attention_impl
  if backend == "tpu":
    return "splash"
  return "cudnn" if backend in ("gpu", "cuda") and cfg.dtype in ("bfloat16", "float16") else "xla"


def causal_attention(q_BTHD: Array, k_BTKD: Array, v_BTKD: Array, cfg: ModelConfig,
                     segment_ids_BT: Array | None = None) -> Array:
  """softmax(q k^T / sqrt(D)) v under the causal mask, with the kernel `kernel_implementation` picks.

  `segment_ids_BT` (int): packed documents; a token sees only the earlier tokens of its own segment. Splash
  takes the ids and skips nothing more (its static mask is causal only). XLA and cuDNN get a same-segment mask
  (B, 1, T, T); cuDNN's fused kernel receives it as an additive bias in the compute dtype, read from memory
  (2 T^2 bytes a row and layer at bf16: at T = 2048, 8 MiB a row), where the causal part stays implicit.
  """
  impl = kernel_implementation(cfg)
  if impl == "splash":
    # Off TPU (an explicit 'splash' on CPU) the Pallas kernel runs in interpret mode: for tests, slow.
    return splash_attention(q_BTHD, k_BTKD, v_BTKD, block_q=cfg.splash_block_q, block_kv=cfg.splash_block_kv,
                            segment_ids_BT=segment_ids_BT, interpret=traced_platform() != "tpu")
  same_document_B1TS = None
  if segment_ids_BT is not None:
    same_document_B1TS = (segment_ids_BT[:, None, :, None] == segment_ids_BT[:, None, None, :])
  return jax.nn.dot_product_attention(
      q_BTHD, k_BTKD, v_BTKD, mask=same_document_B1TS, scale=1.0 / math.sqrt(q_BTHD.shape[-1]), is_causal=True,
      implementation=impl)


def grouped_logits(q_BTHD: Array, k_BSKD: Array) -> Array:
  """q k^T / sqrt(D) for every query head, (B, K, G, T, S) float32 (accumulated in float32); GQA: query head
  h = k G + g reads KV head k, G = H // K."""
  B, T, H, D = q_BTHD.shape
  K = k_BSKD.shape[2]
  q_BTKGD = q_BTHD.reshape(B, T, K, H // K, D)
  return jnp.einsum("btkgd,bskd->bkgts", q_BTKGD, k_BSKD.astype(q_BTHD.dtype),
                    preferred_element_type=jnp.float32) * jnp.float32(1.0 / math.sqrt(D))


def masked_softmax(logits_BKGTS: Array, mask_BTS: Array) -> Array:
  """float32 softmax rows (B, H, T, S) of grouped logits where `mask_BTS` holds (jax's masked-logit value)."""
  B, K, G, T, S = logits_BKGTS.shape
  masked = -0.7 * jnp.finfo(jnp.float32).max  # jax's value for a masked logit
  logits_BKGTS = jnp.where(mask_BTS[:, None, None], logits_BKGTS, masked)
  return jax.nn.softmax(logits_BKGTS, axis=-1).reshape(B, K * G, T, S)


def attention_weights(q_BTHD: Array, k_BSKD: Array, mask_BTS: Array) -> Array:
  """softmax(q k^T / sqrt(D)) rows (B, H, T, S) where `mask_BTS` (bool, query t sees key s; B may be 1) holds.

  GQA: query head h reads KV head h // G, G = H // K. The logits accumulate in float32 and the softmax runs in
  float32 (jax.nn.dot_product_attention's XLA path); the rows come back in float32.
  """
  return masked_softmax(grouped_logits(q_BTHD, k_BSKD), mask_BTS)


def weighted_values(probs_BHTS: Array, v_BSKD: Array) -> Array:
  """The attention output (B, T, H, D): each query head's rows over its KV head's values, in v's dtype."""
  B, H, T, S = probs_BHTS.shape
  K = v_BSKD.shape[2]
  probs_BKGTS = probs_BHTS.reshape(B, K, H // K, T, S).astype(v_BSKD.dtype)
  return jnp.einsum("bkgts,bskd->btkgd", probs_BKGTS, v_BSKD).reshape(B, T, H, -1)
