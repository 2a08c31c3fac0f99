"""Text requests -> token requests with lm-eval's rules (pair encoding, empty context, rolling windows)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from ssa_jax.data.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class TokenRequest:
  """Score `continuation` after `context`; `owner` is the index of the text request it came from."""

  context: tuple[int, ...]
  continuation: tuple[int, ...]
  owner: int


def prefix_token(tokenizer: Tokenizer) -> int:
  """What an empty context becomes: BOS when the tokenizer has one, else EOS (lm-eval's prefix_token_id)."""
  return tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id


def encode_pairs(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], add_bos: bool | None = None
                 ) -> list[tuple[list[int], list[int]]]:
  """(context ids, continuation ids) per (context, continuation) text pair, as lm-eval's loglikelihood.

  Trailing whitespace of the context moves to the front of the continuation; the continuation's ids are
  the tail of tok(context + continuation) after len(tok(context)). An empty context becomes [prefix].
  """
  prefix = prefix_token(tokenizer)
  wholes, contexts, empties = [], [], []
  for context, continuation in pairs:
    if context == "":
      empties.append(continuation)
    else:  # the context's trailing whitespace is encoded with the continuation
      wholes.append(context + continuation)
      contexts.append(context.rstrip())
  whole_it = iter(tokenizer.encode_batch(wholes, add_bos=add_bos) if wholes else [])
  context_it = iter(tokenizer.encode_batch(contexts, add_bos=add_bos) if contexts else [])
  empty_it = iter(tokenizer.encode_batch(empties, add_bos=False) if empties else [])
  out = []
  for context, _ in pairs:
    if context == "":
      cont = list(next(empty_it))
      # lm-eval: when the continuation itself starts with the prefix token, that token is the context.
      out.append(([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:]))
    else:
      ctx = list(next(context_it))
      out.append((ctx, list(next(whole_it))[len(ctx):]))
  return out


def rolling_windows(tokens: Sequence[int], prefix: int, max_length: int) -> list[tuple[list[int], list[int]]]:
  """Disjoint (context, continuation) windows covering every token once (context_len 1), as lm-eval.

  The first window predicts tokens[:L] from [prefix] + tokens[:L-1], L = min(max_length, n); each later one
  predicts up to max_length new tokens from the max_length tokens before its last one.
  """
  tokens = list(tokens)
  if not tokens:
    return []
  windows = [([prefix], tokens[:max_length])]
  for start in range(max_length, len(tokens), max_length):
    end = min(start + max_length, len(tokens))
    windows.append((tokens[end - max_length - 1:start], tokens[start:end]))
  return windows


def rolling_requests(tokenizer: Tokenizer, texts: Sequence[str], max_length: int,
                     add_bos: bool | None = None) -> list[TokenRequest]:
  """Every rolling window of every text (owner = index of the text)."""
  prefix = prefix_token(tokenizer)
  return [TokenRequest(tuple(ctx), tuple(cont), owner)
          for owner, ids in enumerate(tokenizer.encode_batch(list(texts), add_bos=add_bos))
          for ctx, cont in rolling_windows(ids, prefix, max_length)]


def pair_requests(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], max_length: int,
                  add_bos: bool | None = None) -> list[TokenRequest]:
  """Token requests of (context, continuation) pairs (owner = index of the pair); checks lm-eval's limits."""
  out = []
  for owner, (ctx, cont) in enumerate(encode_pairs(tokenizer, pairs, add_bos)):
    if not cont:
      raise ValueError(f"request {owner}: the continuation {pairs[owner][1]!r} encodes to no tokens")
    if len(cont) > max_length:
      raise ValueError(f"request {owner}: continuation of {len(cont)} tokens is longer than max_length={max_length}")
    out.append(TokenRequest(tuple(ctx), tuple(cont), owner))
  return out
