"""Decoding with the model's KV cache (greedy, or sampled: sampling.py): one prefill call, then a jitted loop
of one-token steps.

The cache index is shared by the batch, so prompts are grouped by token length and each group decodes
together (no padding inside the prompt, hence no attention masks).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ssa_jax.evaluate.sampling import Sampler, pick, prompt_keys
from ssa_jax.model.decoder import init_cache


def _decode(model, variables: dict, prompt_BT, keys_B, max_new_tokens: int, sampler: Sampler):
  """Prompt (B, T) -> continuation (B, max_new_tokens), each token picked by `sampler` (row b with keys_B[b])."""
  B, T = prompt_BT.shape
  cache = init_cache(model.config, B, T + max_new_tokens)
  logits_BTV, cache = model.apply(variables, prompt_BT, cache=cache)
  out_BN = jnp.zeros((B, max_new_tokens), jnp.int32).at[:, 0].set(pick(logits_BTV[:, -1], keys_B, 0, sampler))

  def step(i, carry):
    out_BN, cache = carry
    token_B1 = jax.lax.dynamic_slice_in_dim(out_BN, i - 1, 1, axis=1)
    logits_B1V, cache = model.apply(variables, token_B1, cache=cache)
    return out_BN.at[:, i].set(pick(logits_B1V[:, -1], keys_B, i, sampler)), cache

  out_BN, _ = jax.lax.fori_loop(1, max_new_tokens, step, (out_BN, cache))
  return out_BN


@functools.lru_cache(maxsize=8)
def _jitted(model):
  """One jitted decoder per model (flax modules are not used as static arguments)."""
  return jax.jit(functools.partial(_decode, model), static_argnames=("max_new_tokens", "sampler"))


def generate(model, variables: dict, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             sampler: Sampler = Sampler(), max_batch: int = 16, stop_ids: Sequence[int] = ()) -> list[list[int]]:
  """Continuations of `max_new_tokens` tokens per prompt (cut before the first of `stop_ids`); greedy unless
  `sampler` samples."""
  if max_new_tokens <= 0:
    return [[] for _ in prompts]
  limit = model.config.max_seq_len if model.config.learned_positions else None
  groups: dict[int, list[int]] = defaultdict(list)
  for i, p in enumerate(prompts):
    if not p:
      raise ValueError(f"prompt {i} is empty")
    if limit is not None and len(p) + max_new_tokens > limit:
      raise ValueError(f"prompt {i}: {len(p)} tokens + {max_new_tokens} new exceed the model's "
                       f"{limit} learned positions")
    groups[len(p)].append(i)
  out: list[list[int]] = [[] for _ in prompts]
  for length, idx in groups.items():
    for s in range(0, len(idx), max_batch):
      chunk = idx[s:s + max_batch]
      prompt_BT = jnp.asarray(np.array([prompts[i] for i in chunk], np.int32))
      keys_B = prompt_keys(sampler.seed, jnp.asarray(chunk, jnp.int32))
      gen = np.asarray(jax.device_get(_jitted(model)(variables, prompt_BT, keys_B, max_new_tokens=max_new_tokens,
                                                     sampler=sampler)))
      for row, i in enumerate(chunk):
        tokens = gen[row].tolist()
        for j, t in enumerate(tokens):
          if t in stop_ids:
            tokens = tokens[:j]
            break
        out[i] = tokens
  return out
