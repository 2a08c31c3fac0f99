"""The jitted train and eval steps: next-token cross-entropy, microbatch accumulation, non-finite guard."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from ssa_jax.model import Decoder
from ssa_jax.train.state import TrainState


def next_token_loss(model: Decoder, params, tokens_BT1: jax.Array):
  """(mean cross-entropy in float32, per-layer temperature statistics) for windows of seq_len + 1 tokens."""
  inputs_BT, targets_BT = tokens_BT1[:, :-1], tokens_BT1[:, 1:]
  logits_BTV, state = model.apply({"params": params}, inputs_BT, mutable=["intermediates"])
  logz_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  loss = jnp.mean(logz_BT - target_logit_BT)
  return loss, temperature_stats(state.get("intermediates", {}), model.config.num_layers)


def temperature_stats(intermediates, num_layers: int) -> dict[str, jax.Array]:
  """Mean and standard deviation of each sown tau_* per layer: {'tau_q_mean': (L,), 'tau_q_std': (L,), ...}."""
  stats = {}
  comps = sorted(intermediates.get("layers_0", {}).get("attn", {}))
  for comp in comps:
    taus = [intermediates[f"layers_{i}"]["attn"][comp][0] for i in range(num_layers)]
    stats[f"{comp}_mean"] = jnp.stack([t.mean() for t in taus])
    stats[f"{comp}_std"] = jnp.stack([t.std() for t in taus])
  return stats


def make_train_step(model: Decoder, tx: optax.GradientTransformation, schedule: Callable, microbatches: int):
  """train_step(state, batch) -> (state, metrics). A non-finite loss or gradient leaves params untouched."""

  def grads_of(params, tokens_BT1):
    (loss, stats), grads = jax.value_and_grad(lambda p: next_token_loss(model, p, tokens_BT1), has_aux=True)(params)
    return loss, stats, grads

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    tokens = batch["tokens"]
    if microbatches == 1:
      loss, stats, grads = grads_of(state.params, tokens)
    else:
      tokens_MBT = tokens.reshape(microbatches, tokens.shape[0] // microbatches, tokens.shape[1])

      def accumulate(carry, mb_tokens):
        loss, stats, grads = grads_of(state.params, mb_tokens)
        return jax.tree_util.tree_map(jnp.add, carry, (loss, stats, grads)), None

      zero = jax.tree_util.tree_map(
          lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(lambda: grads_of(state.params, tokens_MBT[0])))
      total, _ = jax.lax.scan(accumulate, zero, tokens_MBT)
      loss, stats, grads = jax.tree_util.tree_map(lambda x: x / microbatches, total)

    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                           opt_state=keep(opt_state, state.opt_state))
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step), "nonfinite": ~finite, **stats}
    return new_state, metrics

  return train_step


def make_eval_step(model: Decoder):
  """eval_step(params, batch) -> summed loss over the batch's sequences (mean per token per sequence)."""

  def eval_step(params, batch):
    loss, _ = next_token_loss(model, params, batch["tokens"])
    return loss

  return eval_step


def jit_train_step(model: Decoder, tx, schedule, microbatches: int, shardings: TrainState, mesh):
  """The train step jitted with the state's NamedShardings in and out (state donated), batches over data x fsdp."""
  from ssa_jax import sharding

  return jax.jit(make_train_step(model, tx, schedule, microbatches),
                 in_shardings=(shardings, {"tokens": sharding.batch_sharding(mesh)}),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
