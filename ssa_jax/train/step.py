"""The jitted train and eval steps: next-token cross-entropy, microbatch accumulation, non-finite guard."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from ssa_jax.model.decoder import Decoder
from ssa_jax.runtime import sharding
from ssa_jax.train.loss import DEFAULT_LOSS_CHUNK_SIZE, next_token_cross_entropy
from ssa_jax.train.state import TrainState
from ssa_jax.train.tree_norms import tree_norms


def next_token_loss(model: Decoder, variables: dict, tokens_BT1: jax.Array,
                    loss_chunk_size: int = DEFAULT_LOSS_CHUNK_SIZE, document_eos_id: int | None = None,
                    denominator: jax.Array | None = None):
  """(mean cross-entropy in float32, per-layer temperature statistics) for windows of seq_len + 1 tokens;
  `document_eos_id` / `denominator`: see loss.next_token_cross_entropy."""
  loss, intermediates = next_token_cross_entropy(model, variables, tokens_BT1, loss_chunk_size, document_eos_id,
                                                 denominator)
  return loss, temperature_stats(intermediates, model.config.num_layers)


def temperature_stats(intermediates, num_layers: int) -> dict[str, jax.Array]:
  """Mean and standard deviation of each sown tau_* per layer: {'tau_q_mean': (L,), 'tau_q_std': (L,), ...}."""
  if "layers" in intermediates:  # layers under nn.scan: each sown tau is stacked, (L, B, T, H)
    attn = intermediates["layers"].get("attn", {})
    taus = {comp: attn[comp][0] for comp in attn}
  else:
    taus = {comp: jnp.stack([intermediates[f"layers_{i}"]["attn"][comp][0] for i in range(num_layers)])
            for comp in intermediates.get("layers_0", {}).get("attn", {})}
  return {f"{comp}_{stat}": fn(tau, axis=tuple(range(1, tau.ndim)))
          for comp, tau in sorted(taus.items()) for stat, fn in (("mean", jnp.mean), ("std", jnp.std))}


def strided_microbatches(tokens_BX: jax.Array, microbatches: int) -> jax.Array:
  """(B, ...) -> (M, B/M, ...), microbatch m = rows m, m+M, m+2M, ...

  The batch is sharded over the data axes in contiguous blocks of rows; taking every M-th row keeps each
  microbatch spread over all of those devices (B/M/devices rows on each), where a plain reshape(M, B/M) would
  give each microbatch to a fraction of the devices and leave the others idle.
  """
  B = tokens_BX.shape[0]
  if B % microbatches:  # the run's batch is checked at start (sharding.check_batch_divisible)
    raise ValueError(f"microbatches: {microbatches} does not divide the batch of {B} rows")
  return jnp.swapaxes(tokens_BX.reshape(B // microbatches, microbatches, *tokens_BX.shape[1:]), 0, 1)


def make_train_step(model: Decoder, tx: optax.GradientTransformation, schedule: Callable, microbatches: int,
                    loss_chunk_size: int = DEFAULT_LOSS_CHUNK_SIZE, layer_norms: bool = False,
                    document_eos_id: int | None = None):
  """train_step(state, batch) -> (state, metrics). A non-finite loss or gradient leaves params and optimizer
  moments untouched (`skip_update`); the step count and the learning-rate schedule still advance.

  `microbatches` M > 1 accumulates the gradient over M strided microbatches (see `strided_microbatches`) in a
  scan, one microbatch's activations alive at a time; the update is that of the whole batch.
  `layer_norms`: the metrics also hold the gradient, parameter and update norms by layer (tree_norms.py).
  `document_eos_id`: document masking (loss.py); microbatches then divide by the whole batch's kept predictions
  over M, as their counts differ, so that the accumulated loss is still the whole batch's mean.
  """
  def grads_of(state: TrainState, tokens_BT1, denominator=None):
    # Only the params are differentiated: the buffers (phi) get no gradient and no update.
    loss_fn = lambda p: next_token_loss(model, {**state.variables, "params": p}, tokens_BT1, loss_chunk_size,
                                        document_eos_id, denominator)
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return loss, stats, grads

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    tokens = batch["tokens"]
    if microbatches == 1:
      loss, stats, grads = grads_of(state, tokens)
    else:
      loss, stats, grads = _accumulated(functools.partial(grads_of, state), tokens, microbatches, document_eos_id)

    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = state.replace(step=state.step + 1, params=_where(finite, params, state.params),
                              opt_state=skip_update(finite, opt_state, state.opt_state))
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step), "nonfinite": ~finite, **stats}
    if layer_norms:
      for kind, tree in (("grad", grads), ("param", new_state.params), ("update", updates)):
        metrics.update(tree_norms(tree, model.config, kind))
    return new_state, metrics

  return train_step


def _accumulated(grads_of: Callable, tokens_BT1: jax.Array, microbatches: int, document_eos_id: int | None):
  """(loss, stats, grads) of the whole batch from `grads_of(tokens, denominator)` over M strided microbatches, in
  a scan (one microbatch's activations alive at a time)."""
  tokens_MBT = strided_microbatches(tokens_BT1, microbatches)
  denominator = None
  if document_eos_id is not None:
    denominator = jnp.sum(tokens_BT1[:, :-1] != document_eos_id, dtype=jnp.float32) / microbatches

  def accumulate(carry, mb_tokens):
    return jax.tree_util.tree_map(jnp.add, carry, grads_of(mb_tokens, denominator)), None

  zero = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(lambda: grads_of(tokens_MBT[0])))
  total, _ = jax.lax.scan(accumulate, zero, tokens_MBT)
  # Equal-sized microbatches (or, under document masking, equal denominators): the mean of their losses (and
  # gradients) is the whole batch's.
  return jax.tree_util.tree_map(lambda x: x / microbatches, total)


def _where(finite: jax.Array, new, old):
  return jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)


def skip_update(finite: jax.Array, new_opt_state, old_opt_state):
  """The optimizer state after a step: the new one when `finite`, else the old one but for the schedules'
  step counts, which advance anyway, so that the learning rate stays schedule(global step) after a skip.

  Adam's own count stays with its moments (its bias correction counts the updates the moments hold).
  """
  is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)
  pick = lambda new, old: new if is_schedule(new) else _where(finite, new, old)
  return jax.tree_util.tree_map(pick, new_opt_state, old_opt_state, is_leaf=is_schedule)


def nonfinite_counts() -> dict[str, jax.Array]:
  """The loop's non-finite step counters (int32 scalars), carried on the device from step to step:
  `total` skipped steps, `in_a_row` ending at the latest step, `longest` run so far."""
  return {k: jnp.zeros((), jnp.int32) for k in ("total", "in_a_row", "longest")}


def count_nonfinite(counts: dict[str, jax.Array], nonfinite: jax.Array) -> dict[str, jax.Array]:
  """The counters after a step whose update was skipped (`nonfinite`) or applied."""
  bad = nonfinite.astype(jnp.int32)
  in_a_row = (counts["in_a_row"] + 1) * bad
  return {"total": counts["total"] + bad, "in_a_row": in_a_row, "longest": jnp.maximum(counts["longest"], in_a_row)}


def make_eval_step(model: Decoder, loss_chunk_size: int = DEFAULT_LOSS_CHUNK_SIZE,
                   document_eos_id: int | None = None):
  """eval_step(variables, batch) -> the batch's mean next-token cross-entropy (float32)."""
  return lambda variables, batch: next_token_loss(model, variables, batch["tokens"], loss_chunk_size,
                                                  document_eos_id)[0]


def jit_train_step(model: Decoder, tx, schedule, microbatches: int, shardings: TrainState, mesh,
                   loss_chunk_size: int = DEFAULT_LOSS_CHUNK_SIZE, layer_norms: bool = False,
                   document_eos_id: int | None = None):
  """The train step jitted with the state's NamedShardings in and out (state donated), batches over data x fsdp."""
  return jax.jit(make_train_step(model, tx, schedule, microbatches, loss_chunk_size, layer_norms, document_eos_id),
                 in_shardings=(shardings, {"tokens": sharding.batch_sharding(mesh)}),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))


def jit_loop_step(model: Decoder, tx, schedule, microbatches: int, shardings: TrainState, mesh,
                  loss_chunk_size: int = DEFAULT_LOSS_CHUNK_SIZE, layer_norms: bool = False,
                  document_eos_id: int | None = None):
  """The training loop's step: loop_step(state, counts, batch) -> (state, counts, metrics), the train step
  plus the non-finite counters (`nonfinite_counts`), so that the loop reads the device only at log steps."""
  train_step = make_train_step(model, tx, schedule, microbatches, loss_chunk_size, layer_norms, document_eos_id)

  def loop_step(state, counts, batch):
    state, metrics = train_step(state, batch)
    return state, count_nonfinite(counts, metrics["nonfinite"]), metrics

  replicated = sharding.replicated(mesh)
  return jax.jit(loop_step, in_shardings=(shardings, replicated, {"tokens": sharding.batch_sharding(mesh)}),
                 out_shardings=(shardings, replicated, replicated), donate_argnums=(0, 1))


def under_mesh(fn: Callable, mesh) -> Callable:
  """`fn` called (and so traced) under `jax.set_mesh(mesh)`: the attention kernel follows the mesh's platform
  ('auto' is splash on TPU) and the splash kernel's shard_map finds the mesh it splits rows and heads over."""

  @functools.wraps(fn)
  def call(*args):
    with jax.set_mesh(mesh):
      return fn(*args)

  return call
