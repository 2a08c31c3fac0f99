"""Graph next-token study (paper Sec. 4.1, Fig. 3, Table 1): vanilla vs query-temperature attention.

Eight tokens; the next token after the last token q of a permutation of all eight is drawn uniformly from
q's neighbourhood in a fixed graph (P*). A 1-layer 1-head attention reads the last token as the query.
SSA multiplies the query by a learned inverse temperature tau, one per neighbourhood-size group.

Our choice where the paper is silent or unidentifiable: the prediction is the attention-weighted mixture of
the context tokens (value = one-hot token, a copy head), so the model's next-token distribution *is* its
attention row and err_map = ||P_hat - P*||_1 measures a well-defined map. With a free value matrix and
linear head (paper's g = softmax(C f(X))) the attention map is not identified: any invertible map works,
and we measured err_map ~ 9-13 (of 16 max) for both models. See docs/reproducing_the_paper.md.

Attention methods (--variants, ssa_jax.experiments.methods_adapter): the method's own module replaces the
softmax, on q / k zero-padded to the value width (logits unchanged) and one-hot token values, so its output at
the last position is a mass per token; the prediction is that mass's positive part, normalised (the attention
row itself for a method whose output is a distribution). 'ssa+<method>' multiplies every position's query by its
token's group temperature first. A method that depends on order (forgetting, leviathan) gets P_hat averaged over
MAP_ORDERS random orders of the context.

  python -m ssa_jax.experiments.graph [--seeds 0 1 2] [--steps 3000] [--out_dir runs/graph] [--variants=vanilla,gated]
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssa_jax.experiments import common
from ssa_jax.experiments.methods_adapter import MethodAttention, StudyVariant, kernel_query, method_heads, \
    parse_variants, stack_heads
from ssa_jax.runtime import cli_errors

EDGES = ((0, 1), (0, 2), (0, 3), (1, 4), (2, 5), (3, 6))  # node 7 stands alone
NUM_TOKENS = 8
SSA_MEANING = "the query temperature (one learned inverse temperature per neighbourhood-size group)"
METRICS = ("cross_entropy", "excess_cross_entropy", "err_map")
MAP_ORDERS = 32  # context orders P_hat averages over for a method variant (order matters to some methods)
MASS_FLOOR = 1e-9  # a token's mass below this (a negative differential mass included) reads as this


def default_config() -> ml_collections.ConfigDict:
  """Hyper-parameters of the graph study (every field is a --flag)."""
  c = ml_collections.ConfigDict()
  c.seeds = (0, 1, 2, 3, 4)
  c.steps = 3000
  c.batch_size = 1024
  c.learning_rate = 1e-2  # paper: Adam 1e-4 (steps unreported); 1e-2 + cosine decay fits the CPU budget
  c.embed_dim = 3  # < 8 tokens: embeddings are semantically close, the regime of Lemma 1 / Prop. 1
  c.learn_embeddings = True  # unit-norm learned embeddings; False: fixed random unit-norm ones
  c.log_every = 1000
  c.out_dir = "runs/graph"
  # Comma-separated variants as the comparison names them (vanilla, ssa, gated, diff, ssa+gated, ...);
  # '' = the paper's two models, vanilla and SSA (the reproduction, with its table and figure).
  c.variants = ""
  return c


def target_map() -> np.ndarray:
  """P*: row q is uniform over q's neighbourhood (q included)."""
  adj_NN = np.eye(NUM_TOKENS)
  for i, j in EDGES:
    adj_NN[i, j] = adj_NN[j, i] = 1.0
  return adj_NN / adj_NN.sum(1, keepdims=True)


def neighbourhood_sizes() -> np.ndarray:
  """Neighbourhood size (node itself included) of each token: 4, 3, 3, 3, 2, 2, 2, 1."""
  return (target_map() > 0).sum(1)


def init_params(key: jax.Array, config: ml_collections.ConfigDict, ssa: bool) -> dict:
  """Embeddings, W_q, W_k and (SSA only) one log inverse temperature per neighbourhood-size group."""
  k_e, k_q, k_k = jax.random.split(key, 3)
  d = config.embed_dim
  params = {
      "embed": jax.random.normal(k_e, (NUM_TOKENS, d)),
      "wq": jax.random.normal(k_q, (d, d)) / np.sqrt(d),
      "wk": jax.random.normal(k_k, (d, d)) / np.sqrt(d),
  }
  if ssa:
    params["log_tau"] = jnp.zeros(int(neighbourhood_sizes().max()))  # tau = 1 at start
  return params


def attention_logprobs(params: dict, tokens_BL: jax.Array) -> jax.Array:
  """Log attention weights (B, L) of the last token over the whole sequence (itself included)."""
  e_Nd = params["embed"] / jnp.linalg.norm(params["embed"], axis=-1, keepdims=True)
  x_BLd = e_Nd[tokens_BL]
  q_Bd = x_BLd[:, -1] @ params["wq"]
  k_BLd = x_BLd @ params["wk"]
  scores_BL = jnp.einsum("bd,bld->bl", q_Bd, k_BLd) / np.sqrt(q_Bd.shape[-1])
  if "log_tau" in params:  # SSA: the query token's inverse temperature, one per neighbourhood-size group
    group_N = jnp.asarray(neighbourhood_sizes() - 1)
    scores_BL = jnp.exp(params["log_tau"])[group_N[tokens_BL[:, -1]]][:, None] * scores_BL
  return jax.nn.log_softmax(scores_BL, axis=-1)


def attention_map(params: dict, logprobs=attention_logprobs, orders: int = 1) -> np.ndarray:
  """P_hat (8, 8): row q is query q's attention over the 8 tokens in index order (the learned transition).

  orders = 1: the other tokens in index order, then q last (the paper's models are order-free); more: the mean
  over that many random orders of the other tokens (fixed, the same for every model)."""
  rng = np.random.default_rng(0)
  rows = []
  for q in range(NUM_TOKENS):
    others = np.array([t for t in range(NUM_TOKENS) if t != q])
    perms = [others] + [rng.permutation(others) for _ in range(orders - 1)]
    orders_ML = np.stack([np.append(p, q) for p in perms])
    p_ML = np.asarray(jnp.exp(logprobs(params, jnp.asarray(orders_ML))))
    rows.append(np.mean([p_L[np.argsort(o_L)] for p_L, o_L in zip(p_ML, orders_ML)], axis=0))
  return np.stack(rows)


def sample_batch(key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Random permutations of the 8 tokens and the next token drawn from P*[last token]."""
  k_perm, k_next = jax.random.split(key)
  tokens_BL = jnp.argsort(jax.random.uniform(k_perm, (batch_size, NUM_TOKENS)), axis=-1)
  p_NN = jnp.asarray(target_map())
  next_B = jax.random.categorical(k_next, jnp.log(p_NN[tokens_BL[:, -1]] + 1e-30))
  return tokens_BL, next_B


def batch_loss(params: dict, key: jax.Array, batch_size: int, logprobs=attention_logprobs) -> jax.Array:
  """Cross-entropy of the copy head: -log(attention on the position holding the next token)."""
  tokens_BL, next_B = sample_batch(key, batch_size)
  logp_BL = logprobs(params, tokens_BL)
  return -jnp.sum(jnp.where(tokens_BL == next_B[:, None], logp_BL, 0.0), axis=-1).mean()


def evaluate(p_hat_NN: np.ndarray) -> dict:
  """Population cross-entropy (queries uniform), its excess over H(P*), and err_map = sum |P_hat - P*|."""
  p_NN = target_map()
  ce = float(-(p_NN * np.log(np.clip(p_hat_NN, 1e-30, None))).sum(1).mean())
  entropy = float(-(p_NN * np.log(np.where(p_NN > 0, p_NN, 1.0))).sum(1).mean())
  return {"cross_entropy": ce, "excess_cross_entropy": ce - entropy, "err_map": float(np.abs(p_hat_NN - p_NN).sum())}


def run_one(config: ml_collections.ConfigDict, seed: int, ssa: bool) -> dict:
  """Trains one model; returns its metrics, attention map and (SSA) temperatures per group."""
  key = jax.random.PRNGKey(seed)
  k_init, k_train = jax.random.split(key)
  params = init_params(k_init, config, ssa)
  frozen = None if config.learn_embeddings else params["embed"]

  def loss_fn(p, k):
    if frozen is not None:
      p = {**p, "embed": frozen}
    return batch_loss(p, k, config.batch_size)

  optimizer = optax.adam(optax.cosine_decay_schedule(config.learning_rate, config.steps))
  params, _ = common.train(loss_fn, params, optimizer, config.steps, k_train, log_every=config.log_every,
                           label=f"{'ssa' if ssa else 'vanilla'} seed {seed}")
  p_hat = attention_map(params)
  result = {"seed": seed, "model": "ssa" if ssa else "vanilla", **evaluate(p_hat), "p_hat": p_hat}
  if ssa:
    tau = np.exp(np.asarray(params["log_tau"]))
    result["inverse_temperature_by_size"] = {str(s + 1): float(tau[s]) for s in range(tau.size)}
    result["temperature_by_size"] = {str(s + 1): float(1.0 / tau[s]) for s in range(tau.size)}
  return result


def method_attention(config: ml_collections.ConfigDict, kind: str) -> MethodAttention:
  """attention_kind `kind` on this study's shapes: x the unit embeddings, q / k / v one-hot wide."""
  width = max(config.embed_dim, NUM_TOKENS)
  return MethodAttention(kind, config.embed_dim, method_heads(kind), width, NUM_TOKENS)


def method_logprobs(params: dict, tokens_BL: jax.Array, attn: MethodAttention) -> jax.Array:
  """Log prediction (B, L) of the token at each position: the method's output at the last position over one-hot
  token values, positive part normalised; 'log_tau' (ssa+method) scales every position's query first."""
  e_Nd = params["embed"] / jnp.linalg.norm(params["embed"], axis=-1, keepdims=True)
  x_BLd = e_Nd[tokens_BL]
  q_BLHd = jnp.einsum("bld,hde->blhe", x_BLd, params["wq"])
  k_BLHd = jnp.einsum("bld,hde->blhe", x_BLd, params["wk"])
  if "log_tau" in params:
    group_N = jnp.asarray(neighbourhood_sizes() - 1)
    q_BLHd = jnp.exp(params["log_tau"])[group_N[tokens_BL]][..., None, None] * q_BLHd
  width, d = attn.cfg.head_dim, x_BLd.shape[-1]
  pad = ((0, 0), (0, 0), (0, 0), (0, width - d))  # zero dims: q k^T unchanged
  q_BLHD = kernel_query(jnp.pad(q_BLHd, pad), 1.0 / np.sqrt(d))  # the study's logits q k^T / sqrt(d)
  v_BLHD = jnp.broadcast_to(jax.nn.one_hot(tokens_BL, width)[:, :, None], q_BLHD.shape)
  out_BLHD = attn(params["method"], x_BLd, q_BLHD, jnp.pad(k_BLHd, pad), v_BLHD)
  mass_BD = jnp.maximum(out_BLHD[:, -1].sum(1), MASS_FLOOR)
  logp_BD = jnp.log(mass_BD / mass_BD.sum(-1, keepdims=True))
  return jnp.take_along_axis(logp_BD, tokens_BL, axis=1)


def run_method(config: ml_collections.ConfigDict, seed: int, variant: StudyVariant) -> dict:
  """Trains one method variant (same data, budget and initial embeddings / W_q / W_k as the paper's models)."""
  key = jax.random.PRNGKey(seed)
  k_init, k_train = jax.random.split(key)
  attn = method_attention(config, variant.kind)
  params = init_params(k_init, config, variant.ssa)
  k_heads, k_method = jax.random.split(jax.random.fold_in(k_init, 1))
  d = config.embed_dim
  for name, k in zip(("wq", "wk"), jax.random.split(k_heads)):
    params[name] = stack_heads(k, params[name], attn.cfg.num_heads, 1.0 / np.sqrt(d))
  x_BLd, qkv_BLHD = jnp.zeros((1, NUM_TOKENS, d)), jnp.zeros((1, NUM_TOKENS, attn.cfg.num_heads, attn.cfg.head_dim))
  params["method"] = attn.init(k_method, x_BLd, qkv_BLHD, qkv_BLHD, qkv_BLHD)
  frozen = None if config.learn_embeddings else params["embed"]
  logprobs = lambda p, t: method_logprobs(p, t, attn)  # noqa: E731

  def loss_fn(p, k):
    if frozen is not None:
      p = {**p, "embed": frozen}
    return batch_loss(p, k, config.batch_size, logprobs)

  optimizer = optax.adam(optax.cosine_decay_schedule(config.learning_rate, config.steps))
  params, _ = common.train(loss_fn, params, optimizer, config.steps, k_train, log_every=config.log_every,
                           label=f"{variant.name} seed {seed}")
  p_hat = attention_map(params, logprobs, MAP_ORDERS)
  return {"seed": seed, "model": variant.name, **evaluate(p_hat), "p_hat": p_hat}


def run_variant(config: ml_collections.ConfigDict, variant: StudyVariant, seed: int) -> dict:
  """One variant and seed: 'vanilla' / 'ssa' the paper's models (run_one), a method variant run_method."""
  if not variant.uses_method:
    return {**run_one(config, seed, variant.ssa), "model": variant.name}
  return run_method(config, seed, variant)


def parse(text: str) -> list[StudyVariant]:
  """--variants of this study (ConfigError naming the study for a name without a meaning here)."""
  return parse_variants("graph", text, SSA_MEANING)


def summarize(runs: list[dict]) -> dict:
  """Mean/std of the metrics per model and the geometric-mean temperature per neighbourhood size."""
  summary = {model: {m: common.mean_std([r[m] for r in runs if r["model"] == model])
                     for m in ("cross_entropy", "excess_cross_entropy", "err_map")} for model in ("vanilla", "ssa")}
  ssa_rows = [r for r in runs if r["model"] == "ssa"]
  sizes = sorted(ssa_rows[0]["temperature_by_size"], key=int)
  summary["ssa"]["temperature_by_size_geomean"] = {
      s: float(np.exp(np.mean([np.log(r["temperature_by_size"][s]) for r in ssa_rows]))) for s in sizes}
  pairs = [(v["err_map"], s["err_map"]) for v, s in zip([r for r in runs if r["model"] == "vanilla"], ssa_rows)]
  summary["seeds_where_ssa_err_map_lower"] = int(sum(s < v for v, s in pairs))
  return summary


def plot(path: Path, payload: dict) -> None:
  """P*, P_hat(SSA) and P_hat(vanilla) of the first seed side by side."""
  plt = common.pyplot()
  runs = payload["runs"]
  first = runs[0]["seed"]
  ssa = next(r for r in runs if r["model"] == "ssa" and r["seed"] == first)
  van = next(r for r in runs if r["model"] == "vanilla" and r["seed"] == first)
  panels = [("P* (target)", target_map()), (f"P_hat SSA (err_map {ssa['err_map']:.3f})", ssa["p_hat"]),
            (f"P_hat vanilla (err_map {van['err_map']:.3f})", van["p_hat"])]
  fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
  for ax, (title, m) in zip(axes, panels):
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("key token")
    ax.set_ylabel("query token")
    ax.set_xticks(range(NUM_TOKENS))
    ax.set_yticks(range(NUM_TOKENS))
  fig.colorbar(im, ax=axes, shrink=0.8)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(config: ml_collections.ConfigDict) -> dict:
  """Runs vanilla and SSA (or config.variants) over all seeds; returns the runs and their summary."""
  if config.variants:
    return common.run_variants(parse(config.variants), config.seeds, lambda v, s: run_variant(config, v, s), METRICS)
  runs = []
  for seed in config.seeds:
    for ssa in (False, True):
      runs.append(run_one(config, seed, ssa))
      r = runs[-1]
      print(f"seed {seed} {r['model']:8s} CE {r['cross_entropy']:.4f} err_map {r['err_map']:.3f}", flush=True)
  return {"runs": runs, "summary": summarize(runs)}


def print_table(payload: dict) -> None:
  """Prints the Table 1 / Fig. 3 numbers (or each variant's metrics)."""
  if payload["config"]["variants"]:
    return common.print_variants(payload, METRICS)
  s = payload["summary"]
  print("\nmodel     cross-entropy      excess CE          err_map")
  for model in ("vanilla", "ssa"):
    m = s[model]
    print(f"{model:8s}  {m['cross_entropy']['mean']:.4f}+-{m['cross_entropy']['std']:.4f}  "
          f"{m['excess_cross_entropy']['mean']:.4f}+-{m['excess_cross_entropy']['std']:.4f}  "
          f"{m['err_map']['mean']:.3f}+-{m['err_map']['std']:.3f}")
  print(f"SSA err_map lower on {s['seeds_where_ssa_err_map_lower']}/{len(payload['config']['seeds'])} seeds")
  temps = s["ssa"]["temperature_by_size_geomean"]
  print("neighbourhood size (incl. itself): " + "  ".join(f"{k:>7s}" for k in temps))
  print("learned temperature 1/tau (gmean): " + "  ".join(f"{v:7.3f}" for v in temps.values()))
  print("learned inverse temperature tau:   " + "  ".join(f"{1 / v:7.3f}" for v in temps.values()))


def main(argv: list[str] | None = None) -> None:
  """The command line: every field of default_config() is a --flag; writes OUT_DIR/graph.json and the maps."""
  common.run_study(argv, default_config(), __doc__.splitlines()[0], run, print_table, "graph", plot,
                   "graph_attention_maps.png")


if __name__ == "__main__":
  cli_errors.run_argv(main)
