"""Next-token cross-entropy without the whole (B, T, V) float32 logits: the LM head applied chunk by chunk.

The decoder returns its final-normed hidden states (`return_hidden=True`); the head and the log-softmax run on
`chunk_size` positions of every row at a time, under `jax.checkpoint` so that the backward pass recomputes one
chunk's logits at a time instead of keeping them all. Chunks cut the sequence axis, not the batch axis, so
every chunk spans all data-sharded devices. Logits are in the compute dtype (as the decoder's own head gives
them); the logsumexp and the mean are float32.

Document masking (config.data.document_masking): the windows' documents are separate sequences
(ssa_jax.model.documents: positions restart and attention stays inside each document). The prediction made at a
document's EOS is of the next document's first token, which the masked model sees nothing of: a guess of how
documents begin, and part of no document's own loss. It leaves the loss, so that a packed row's loss is exactly
that of its documents each computed alone (MaxText likewise shifts targets inside each document). The mean is
over the predictions kept.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssa_jax.model.decoder import Decoder
from ssa_jax.model.documents import document_segments
from ssa_jax.model.layers import compute_dtype
from ssa_jax.model.params import lm_head_kernel

# The default of config.train.loss_chunk_size: positions of each row per LM-head chunk. At Pythia's vocabulary
# (50304) and 32 rows, one chunk's bf16 logits are 32 x 256 x 50304 x 2 B = 0.8 GB (the whole float32 logits at
# 32 x 2048 are 13 GB); 32 x 256 = 8192 rows make each chunk's matmul large (its speed on a GPU is not yet measured).
DEFAULT_LOSS_CHUNK_SIZE = 256


def next_token_cross_entropy(model: Decoder, variables: dict, tokens_BT1: jax.Array,
                             chunk_size: int = DEFAULT_LOSS_CHUNK_SIZE, document_eos_id: int | None = None,
                             denominator: jax.Array | None = None):
  """(mean cross-entropy in float32, sown intermediates) for windows of seq_len + 1 tokens; `chunk_size` 0
  takes the decoder's own (B, T, V) float32 logits at once.

  `document_eos_id`: document masking, documents split at this token (see the module docstring).
  `denominator`: what the summed cross-entropy is divided by (default: the number of predictions kept), so that
  microbatches can share their whole batch's count.
  """
  inputs_BT, targets_BT = tokens_BT1[:, :-1], tokens_BT1[:, 1:]
  documents, kept_BT = {}, None
  if document_eos_id is not None:
    segment_ids_BT, positions_BT = document_segments(inputs_BT, document_eos_id)
    documents = {"segment_ids_BT": segment_ids_BT, "positions_BT": positions_BT}
    kept_BT = inputs_BT != document_eos_id
  if denominator is None:
    denominator = inputs_BT.size if kept_BT is None else jnp.sum(kept_BT, dtype=jnp.float32)
  if chunk_size == 0:
    logits_BTV, state = model.apply(variables, inputs_BT, mutable=["intermediates"], **documents)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    nll_BT = jax.nn.logsumexp(logits_BTV, axis=-1) - target_logit_BT
    loss = jnp.sum(nll_BT if kept_BT is None else jnp.where(kept_BT, nll_BT, 0.0)) / denominator
  else:
    x_BTd, state = model.apply(variables, inputs_BT, mutable=["intermediates"], return_hidden=True, **documents)
    head_dV = lm_head_kernel(variables["params"], model.config)
    loss = chunked_cross_entropy(x_BTd, head_dV, targets_BT, chunk_size, compute_dtype(model.config),
                                 kept_BT) / denominator
  return loss, state.get("intermediates", {})


def chunked_cross_entropy(x_BTd: jax.Array, head_dV: jax.Array, targets_BT: jax.Array, chunk_size: int,
                          dtype, kept_BT: jax.Array | None = None) -> jax.Array:
  """The sum over (B, T) (where `kept_BT`, default all) of logsumexp(x W) - (x W)[target], `chunk_size`
  positions of every row at a time.

  `head_dV` stays float32 into each chunk and is cast to `dtype` there, so that the gradient of the head is
  summed over the chunks in float32 (a cast outside would make the scan accumulate it in `dtype`).
  A sequence length that `chunk_size` does not divide is padded with masked positions.
  """
  B, T, d = x_BTd.shape
  C = min(chunk_size, T)
  n = -(-T // C)
  pad = n * C - T
  valid_BT = jnp.ones((B, T), jnp.bool_) if kept_BT is None else kept_BT
  if pad:
    x_BTd = jnp.pad(x_BTd, ((0, 0), (0, pad), (0, 0)))
    targets_BT = jnp.pad(targets_BT, ((0, 0), (0, pad)))
    valid_BT = jnp.pad(valid_BT, ((0, 0), (0, pad)))
  # (B, n*C, ...) -> (n, B, C, ...): scan over chunks of positions; the batch axis (sharded) stays whole.
  chunks = lambda a: jnp.moveaxis(a.reshape(B, n, C, *a.shape[2:]), 1, 0)

  @jax.checkpoint
  def chunk_nll_sum(head_dV, x_BCd, targets_BC, valid_BC):
    logits_BCV = jnp.einsum("bcd,dv->bcv", x_BCd.astype(dtype), head_dV.astype(dtype))
    logz_BC = jax.nn.logsumexp(logits_BCV.astype(jnp.float32), axis=-1)
    target_logit_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], axis=-1)[..., 0].astype(jnp.float32)
    return jnp.sum(jnp.where(valid_BC, logz_BC - target_logit_BC, 0.0))

  def body(total, chunk):
    return total + chunk_nll_sum(head_dV, *chunk), None

  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (chunks(x_BTd), chunks(targets_BT), chunks(valid_BT)))
  return total
