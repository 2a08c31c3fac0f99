"""How the next token is picked from the logits: greedy (temperature 0) or sampled with temperature, top-k and
top-p (nucleus), with the filters in transformers' order (temperature, then top-k, then top-p).

Each prompt draws from its own key, `fold_in(fold_in(seed, prompt index), step)`, so a prompt's sample does not
depend on which other prompts share its batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Sampler:
  """temperature 0: greedy (argmax); else softmax(logits / temperature) restricted to the `top_k` most likely
  tokens (0: all) and to the smallest set whose probability reaches `top_p` (1.0: all)."""

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"--temperature: expected >= 0 (0 = greedy), got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"--top_k: expected >= 0 (0 = no limit), got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"--top_p: expected a probability in (0, 1] (1 = no limit), got {self.top_p}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


def filtered_logits(logits_BV: Array, sampler: Sampler) -> Array:
  """float32 logits / temperature with every token outside the top-k and the top-p set at -inf."""
  logits_BV = logits_BV.astype(jnp.float32) / sampler.temperature
  if sampler.top_k:
    kth_B1 = jax.lax.top_k(logits_BV, min(sampler.top_k, logits_BV.shape[-1]))[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  if sampler.top_p < 1.0:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    # A token stays while the probability of the tokens ranked above it is below top_p (so the first always does).
    above_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1) - jax.nn.softmax(sorted_BV, axis=-1)
    kept_B = jnp.sum(above_BV < sampler.top_p, axis=-1)
    cutoff_B1 = jnp.take_along_axis(sorted_BV, kept_B[:, None] - 1, axis=-1)
    logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
  return logits_BV


def pick(logits_BV: Array, keys_B: Array, step: Array | int, sampler: Sampler) -> Array:
  """The next token of each row (B,) int32: argmax when greedy, else a draw with row b's key at `step`."""
  if sampler.greedy:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  step_keys_B = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys_B)
  draw = lambda k, logits_V: jax.random.categorical(k, logits_V)
  return jax.vmap(draw)(step_keys_B, filtered_logits(logits_BV, sampler)).astype(jnp.int32)


def prompt_keys(seed: int, prompt_indices: Array) -> Array:
  """One key per prompt, from the seed and the prompt's index in the request."""
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(prompt_indices)

