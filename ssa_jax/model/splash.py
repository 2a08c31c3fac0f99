"""Causal attention through the Pallas splash kernel (TPU): blocks from config, GQA, packed rows, shard_map.

`jax.experimental.pallas.ops.tpu.splash_attention` computes softmax attention block by block (flash style)
and skips the blocks a static mask rules out, so neither pass materialises the T x T scores. It works on one
device's (heads, T, D) arrays; here it is vmapped over the batch and, when the step is traced under a mesh
(`jax.set_mesh(mesh)`), run inside `shard_map` with the batch over the data axes and the heads over
'tensor', each device computing its own rows and heads with no communication.

GQA runs natively: the kernel's MHA mode takes k / v with fewer heads than q (q head h reads kv head
h // (H / K) through its block index maps, and the dk / dv kernel sums over the q heads of a group), so
k and v are never repeated to H heads in memory.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import (
    BlockSizes, CausalMask, MultiHeadMask, SegmentIds, make_splash_mha)
from jax.sharding import PartitionSpec as P

from ssa_jax.runtime.sharding import BATCH_AXES

Array = jax.Array

HEAD_AXIS = "tensor"  # heads are split over the mesh's 'tensor' axis (ssa_jax/runtime/sharding.py MESH_AXES)
LANES = 128  # the kernel's sequence blocks are multiples of the TPU's 128 lanes


def fit_block(block: int, seq_len: int) -> int:
  """The largest multiple of 128 that is <= `block` and divides `seq_len` (itself a multiple of 128)."""
  block = min(block, seq_len)
  while seq_len % block:
    block -= LANES
  return block


def _kernel(num_heads: int, seq_len: int, block_q: int, block_kv: int, interpret: bool):
  """The splash kernel for `num_heads` causal (seq_len x seq_len) masks, with forward and backward blocks.

  Built where it is called: its mask tables become constants of the traced program (jax caches the numpy
  analysis of the mask per shape, so every layer after the first reuses it).
  """
  bq, bkv = fit_block(block_q, seq_len), fit_block(block_kv, seq_len)
  block_sizes = BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                           block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                           block_q_dq=bq, block_kv_dq=bkv)
  mask = MultiHeadMask([CausalMask((seq_len, seq_len))] * num_heads)
  return make_splash_mha(mask, block_sizes=block_sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _axes_that_divide(mesh, axes: tuple[str, ...], size: int) -> tuple[str, ...] | None:
  """`axes` of `mesh` (those it has) when their product divides `size`, else None (that dim replicated)."""
  present = tuple(a for a in axes if a in mesh.axis_names)
  n = math.prod(mesh.shape[a] for a in present)
  return present if present and size % n == 0 else None


def splash_attention(q_BTHD: Array, k_BTKD: Array, v_BTKD: Array, *, block_q: int, block_kv: int,
                     segment_ids_BT: Array | None = None, interpret: bool = False) -> Array:
  """Causal softmax(q k^T / sqrt(D)) v, (B, T, H, D) -> (B, T, H, D); k / v have K heads, H % K == 0.

  `segment_ids_BT` (int): packed rows, a token sees only earlier tokens of its own segment.
  `block_q` / `block_kv`: the kernel's blocks (multiples of 128), clipped to the sequence.
  `interpret`: run the Pallas kernel in interpret mode (any backend; slow, for tests on CPU).
  T needs no alignment: the sequence is padded to a multiple of 128 at the end, where causality keeps the
  padding out of every real token's view.
  """
  B, T, H, D = q_BTHD.shape
  K = k_BTKD.shape[2]
  if H % K:
    raise ValueError(f"splash attention: {H} query heads are not a multiple of {K} kv heads")
  # The 1/sqrt(D) of the logits, folded into q (the kernel takes no scale).
  q_BTHD = q_BTHD * jnp.asarray(1.0 / math.sqrt(D), q_BTHD.dtype)
  pad = -T % LANES
  if pad:
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    q_BTHD, k_BTKD, v_BTKD = (jnp.pad(x, widths) for x in (q_BTHD, k_BTKD, v_BTKD))
    if segment_ids_BT is not None:
      # Padding is its own segment, so each padded query still sees a key (itself).
      fill = jnp.min(segment_ids_BT) - 1
      segment_ids_BT = jnp.pad(segment_ids_BT, ((0, 0), (0, pad)), constant_values=fill)

  def attend(q_BHTD, k_BKTD, v_BKTD, seg_BT=None):
    kernel = _kernel(q_BHTD.shape[1], q_BHTD.shape[2], block_q, block_kv, interpret)  # T padded
    if seg_BT is None:
      return jax.vmap(kernel)(q_BHTD, k_BKTD, v_BKTD)
    return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=SegmentIds(q=s, kv=s)))(
        q_BHTD, k_BKTD, v_BKTD, seg_BT)

  to_heads_major = lambda x: jnp.swapaxes(x, 1, 2)  # (B, T, H, D) -> (B, H, T, D), the kernel's layout
  q_BHTD, k_BKTD, v_BKTD = map(to_heads_major, (q_BTHD, k_BTKD, v_BTKD))
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    # No mesh in context: the kernel sees the whole arrays, right on one device. Across devices XLA cannot
    # partition a Mosaic call ("wrap the call in a shard_map"): a sharded step is traced under jax.set_mesh.
    out_BHTD = attend(q_BHTD, k_BKTD, v_BKTD, segment_ids_BT)
  else:
    batch = _axes_that_divide(mesh, BATCH_AXES, B)
    heads = _axes_that_divide(mesh, (HEAD_AXIS,), math.gcd(H, K))
    heads = heads[0] if heads else None
    spec = P(batch, heads, None, None)  # q, k, v and the output alike: (rows, heads) split, T and D whole
    seg = () if segment_ids_BT is None else (segment_ids_BT,)
    in_specs = (spec,) * 3 + (P(batch, None),) * len(seg)
    # check_vma off: the Pallas call does not annotate which mesh axes its outputs vary over.
    out_BHTD = jax.shard_map(attend, mesh=mesh, in_specs=in_specs, out_specs=spec, check_vma=False)(
        q_BHTD, k_BKTD, v_BKTD, *seg)
  return jnp.swapaxes(out_BHTD, 1, 2)[:, :T]
