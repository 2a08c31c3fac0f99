"""Documents inside a packed row: which document each token belongs to, and its position within it.

The data pipeline joins documents into windows with an EOS after each (ssa_jax/data/packing.py), so a row's
document boundaries are where its EOS tokens are: a document ends at its EOS and the next begins at the token
after it. The first document of a row is usually the tail of one cut by the window; it starts at position 0 too
(as in MaxText and Levanter), since the model never sees its beginning.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def document_segments(tokens_BT: jax.Array, eos_id: int) -> tuple[jax.Array, jax.Array]:
  """(segment_ids_BT, positions_BT), int32: the index of each token's document in its row, counting the EOS
  tokens before it, and the token's 0-based position inside that document."""
  is_eos_BT = (tokens_BT == eos_id).astype(jnp.int32)
  segment_ids_BT = jnp.cumsum(is_eos_BT, axis=1) - is_eos_BT  # EOS closes its own document
  T = tokens_BT.shape[1]
  t_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), tokens_BT.shape)
  starts_BT = (t_BT == 0) | (jnp.pad(is_eos_BT, ((0, 0), (1, 0)))[:, :T] == 1)
  start_of_document_BT = jax.lax.cummax(jnp.where(starts_BT, t_BT, 0), axis=1)
  return segment_ids_BT, t_BT - start_of_document_BT
