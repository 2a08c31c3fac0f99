"""Imbalanced-token study (paper Sec. 4.2, Proposition 2): learned position temperature vs flat temperature.

One sequence of tokens a, b (orthonormal); target y = alpha a + (1 - alpha) b at every position n >= n0 (both
tokens seen). Output at n: sum_{i<=n} softmax_i(tau_n x_i^T W x_n) x_i (eq. 1, no value map). Loss (1/L) sum ||y - .||^2.
Temperatures: `flat` tau_n = t fixed (a grid of t; W learned), `log_position` tau_n = b0 + b1 log n (learned),
`free_position` one learned tau_n per position (Prop. 2's tau_n). The identifiable quantity is the effective
logit gap g_n = tau_n x_n^T W (a - b), which Prop. 2 says must equal log(kappa_n) + log(alpha / (1 - alpha)).

Settings: `power_p`: kappa_n ~ n^p (imbalance grows with n faster for larger p); `quadrant`: the paper's
instance made feasible (kappa_n in [1, 2] for n <= L/2 and kappa_n >= 4 for n >= 5L/6; the paper's "n >= 3L/4"
cannot hold together with kappa_{L/2} <= 2 in one sequence, since n_a never decreases).

Attention methods (--variants, ssa_jax.experiments.methods_adapter): the method's own module replaces the
softmax (query tau_n x_n W, keys and values x_i, a causal full forward); its output is the mean over heads (one,
two for differential, whose second sub-head has its own W). 'vanilla' is the best flat temperature, 'ssa' the
log-position one (the paper's SSA form), '<method>' the method under the best flat temperature and
'ssa+<method>' under the log-position one; each variant's metric is its loss in every setting.

  python -m ssa_jax.experiments.imbalance [--seq_len 96] [--powers 0 0.25 0.5 0.75] [--out_dir runs/imbalance] \
      [--variants=vanilla,ssa,fox --seed 0]
"""

from __future__ import annotations

import math
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

VARIANTS = ("flat", "log_position", "free_position")
SSA_MEANING = "the position temperature (the learned log-position form b0 + b1 log n)"


def default_config() -> ml_collections.ConfigDict:
  """Hyper-parameters of the imbalance study (every field is a --flag)."""
  c = ml_collections.ConfigDict()
  c.seq_len = 96  # divisible by 6 for the quadrant instance
  c.dim = 4
  c.alpha = 0.5  # target mixture weight of the minority token a
  c.powers = (0.0, 0.25, 0.5, 0.75)  # kappa_n = n^p; p < 1 keeps n_a(n) non-decreasing
  c.flat_taus = (0.5, 1.0, 2.0, 4.0)  # the flat grid; the best one is reported
  c.steps = 3000
  c.learning_rate = 3e-2
  c.seed = 0
  c.log_every = 0
  c.out_dir = "runs/imbalance"
  # Comma-separated variants as the comparison names them (vanilla, ssa, gated, diff, ssa+gated, ...), trained
  # with `seed`; '' = the paper's study (flat, log-position and free-position temperatures, the figure).
  c.variants = ""
  return c


def power_sequence(seq_len: int, power: float) -> np.ndarray:
  """is_a (L,) bool with n_a(n) = round(n / (1 + n^power)), so kappa_n = (n - n_a) / n_a ~ n^power."""
  if not 0.0 <= power < 1.0:
    raise ValueError(f"powers: expected values in [0, 1) (n_a must not decrease), got {power}")
  n = np.arange(1, seq_len + 1)
  n_a = np.maximum(1, np.floor(n / (1.0 + n**power) + 0.5)).astype(int)
  return np.diff(np.concatenate([[0], n_a])) > 0


def quadrant_sequence(seq_len: int) -> np.ndarray:
  """is_a (L,): 'a b b' repeated up to L/2 (kappa in [1, 2] from n = 2), then only b (kappa >= 4 from 5L/6)."""
  if seq_len % 6:
    raise ValueError(f"seq_len: expected a multiple of 6 for the quadrant instance, got {seq_len}")
  first = np.tile([True, False, False], seq_len // 6)
  return np.concatenate([first, np.zeros(seq_len // 2, bool)])


def imbalance(is_a_L: np.ndarray) -> tuple[np.ndarray, int]:
  """kappa_n = (n - n_a) / n_a per position (inf before the first a) and n0 (1-based: both tokens seen)."""
  n = np.arange(1, is_a_L.size + 1)
  n_a = np.cumsum(is_a_L)
  with np.errstate(divide="ignore"):
    kappa = np.where(n_a > 0, (n - n_a) / np.maximum(n_a, 1), np.inf)
  both = (n_a > 0) & (n_a < n)
  if not both.any():
    raise ValueError("sequence: both tokens a and b must appear")
  return kappa, int(n[both][0])


def formula_tau(kappa_L: np.ndarray, alpha: float) -> np.ndarray:
  """Prop. 2's temperature log(kappa_n) + log(alpha / (1 - alpha))."""
  return np.log(kappa_L) + math.log(alpha / (1.0 - alpha))


def flat_lower_bound(is_a_L: np.ndarray, alpha: float, grid: int = 20001) -> float:
  """Lower bound on any flat-temperature loss (proof of Prop. 2): b-queries only, min over M = e^{(b-a)^T W b}.

  For a b-query the output is w a + (1 - w) b with w = 1 / (1 + M kappa_n), so the loss term is
  ||a - b||^2 (alpha - w)^2 = 2 (alpha - w)^2 for orthonormal a, b.
  """
  kappa, n0 = imbalance(is_a_L)
  n = np.arange(1, is_a_L.size + 1)
  k = kappa[(~is_a_L) & (n >= n0)]
  log_m = np.linspace(-12.0, 12.0, grid)[:, None]
  w = 1.0 / (1.0 + np.exp(log_m) * k[None, :])
  return float((2.0 * (alpha - w) ** 2).sum(1).min() / is_a_L.size)


def tau_of(params: dict, variant: str, flat_tau: float, seq_len: int) -> jax.Array:
  """tau_n (L,) for one temperature variant."""
  if variant == "flat":
    return jnp.full((seq_len,), flat_tau)
  if variant == "log_position":
    return params["b0"] + params["b1"] * jnp.log(jnp.arange(1, seq_len + 1))
  return params["tau"]  # free_position


def attention_outputs(params: dict, x_Ld: jax.Array, tau_L: jax.Array) -> jax.Array:
  """Causal attention output (L, d) at every position with per-position inverse temperature tau_L."""
  L = x_Ld.shape[0]
  scores_LL = tau_L[:, None] * (x_Ld @ params["w"] @ x_Ld.T)  # row n: query x_n, column i: key x_i
  scores_LL = jnp.where(jnp.tril(jnp.ones((L, L), bool)), scores_LL, -jnp.inf)
  return jax.nn.softmax(scores_LL, -1) @ x_Ld


def method_outputs(params: dict, x_Ld: jax.Array, tau_L: jax.Array, attn: MethodAttention) -> jax.Array:
  """A method's output (L, d): mean over heads, query tau_n x_n W (per head), keys and values x_i."""
  q_1LHd = (tau_L[:, None, None] * jnp.einsum("ld,hde->lhe", x_Ld, params["w"]))[None]
  kv_1LHd = jnp.broadcast_to(x_Ld[None, :, None], q_1LHd.shape)
  return attn(params["method"], x_Ld[None], kernel_query(q_1LHd), kv_1LHd, kv_1LHd)[0].mean(1)


def loss_and_gap(params: dict, ab_2d: jax.Array, is_a_L: np.ndarray, variant: str, flat_tau: float,
                 alpha: float, attn: MethodAttention | None = None) -> tuple[jax.Array, jax.Array]:
  """Risk (1) and the effective logit gap g_n = tau_n x_n^T W (a - b) (score of key a minus key b; with a method
  `attn`, of its first head)."""
  L = is_a_L.size
  _, n0 = imbalance(is_a_L)
  tau_L = tau_of(params, variant, flat_tau, L)
  y_d = alpha * ab_2d[0] + (1.0 - alpha) * ab_2d[1]
  x_Ld = ab_2d[jnp.where(jnp.asarray(is_a_L), 0, 1)]
  out_Ld = attention_outputs(params, x_Ld, tau_L) if attn is None else method_outputs(params, x_Ld, tau_L, attn)
  mask_L = jnp.arange(1, L + 1) >= n0
  loss = jnp.sum(mask_L * jnp.sum((y_d - out_Ld) ** 2, -1)) / L
  w = params["w"] if attn is None else params["w"][0]
  gap_L = tau_L * (x_Ld @ w @ (ab_2d[0] - ab_2d[1]))
  return loss, gap_L


def with_method(config: ml_collections.ConfigDict, params: dict, kind: str, seq_len: int,
                key: jax.Array) -> tuple[dict, MethodAttention]:
  """`params` with W stacked over the method's heads (head 0 the study's own) and the method's parameters."""
  attn = MethodAttention(kind, config.dim, method_heads(kind), config.dim, seq_len)
  k_heads, k_method = jax.random.split(key)
  params = {**params, "w": stack_heads(k_heads, params["w"], attn.cfg.num_heads, 0.1)}
  zeros_1LHd = jnp.zeros((1, seq_len, attn.cfg.num_heads, config.dim))
  params["method"] = attn.init(k_method, jnp.zeros((1, seq_len, config.dim)), zeros_1LHd, zeros_1LHd, zeros_1LHd)
  return params, attn


def fit(config: ml_collections.ConfigDict, is_a_L: np.ndarray, variant: str, flat_tau: float = 1.0,
        kind: str = "softmax") -> dict:
  """Trains W (and the temperature parameters) on one sequence; returns final loss and effective gaps. `kind`:
  the attention method (methods_adapter; 'softmax' is the study's own attention)."""
  k_tok, k_w = jax.random.split(jax.random.PRNGKey(config.seed))
  ab_2d = jnp.linalg.qr(jax.random.normal(k_tok, (config.dim, 2)))[0].T  # orthonormal token embeddings a, b
  params = {"w": 0.1 * jax.random.normal(k_w, (config.dim, config.dim))}
  attn = None
  if kind != "softmax":
    params, attn = with_method(config, params, kind, is_a_L.size, jax.random.fold_in(k_w, 1))
  if variant == "log_position":
    params |= {"b0": jnp.ones(()), "b1": jnp.zeros(())}
  if variant == "free_position":
    params["tau"] = jnp.ones(is_a_L.size)

  def loss_fn(p, _):
    return loss_and_gap(p, ab_2d, is_a_L, variant, flat_tau, config.alpha, attn)[0]

  params, curve = common.train(loss_fn, params, optax.adam(config.learning_rate), config.steps, k_w,
                               log_every=config.log_every, label=variant)
  loss, gap = loss_and_gap(params, ab_2d, is_a_L, variant, flat_tau, config.alpha, attn)
  return {"loss": float(loss), "gap": np.asarray(gap), "curve_min": float(curve.min())}


def run_setting(config: ml_collections.ConfigDict, name: str, is_a_L: np.ndarray) -> dict:
  """All variants on one sequence."""
  kappa, n0 = imbalance(is_a_L)
  flats = {t: fit(config, is_a_L, "flat", t) for t in config.flat_taus}
  best_t = min(flats, key=lambda t: flats[t]["loss"])
  fits = {"flat": flats[best_t], **{v: fit(config, is_a_L, v) for v in VARIANTS[1:]}}
  n = np.arange(1, is_a_L.size + 1)
  valid = (n >= n0) & np.isfinite(kappa) & (kappa > 0)
  target = formula_tau(np.where(valid, kappa, 1.0), config.alpha)
  gap = fits["free_position"]["gap"]
  row = {
      "setting": name, "n0": n0, "kappa_first": float(kappa[n0 - 1]), "kappa_last": float(kappa[-1]),
      "flat_lower_bound": flat_lower_bound(is_a_L, config.alpha), "best_flat_tau": best_t,
      "loss_flat_by_tau": {str(t): f["loss"] for t, f in flats.items()},
      **{f"loss_{v}": fits[v]["loss"] for v in VARIANTS},
      "free_tau_eff_max_abs_err": float(np.abs(gap - target)[valid].max()),
      "positions": n[valid], "formula_tau": target[valid], "free_tau_eff": gap[valid],
      "log_position_tau_eff": fits["log_position"]["gap"][valid],
  }
  print(f"{name:10s} flat {row['loss_flat']:.5f} (bound {row['flat_lower_bound']:.5f})  "
        f"log_pos {row['loss_log_position']:.5f}  free_pos {row['loss_free_position']:.1e}  "
        f"max|tau_eff - formula| {row['free_tau_eff_max_abs_err']:.3f}", flush=True)
  return row


def settings(config: ml_collections.ConfigDict) -> list[tuple[str, np.ndarray]]:
  """(name, is_a_L) of every power-law setting plus the quadrant instance."""
  rows = [(f"power_{p:g}", power_sequence(config.seq_len, p)) for p in config.powers]
  return rows + [("quadrant", quadrant_sequence(config.seq_len))]


def metric_names(config: ml_collections.ConfigDict) -> list[str]:
  """A variant's metrics: its loss in each setting."""
  return [f"loss_{name}" for name, _ in settings(config)]


def run_variant(config: ml_collections.ConfigDict, variant: StudyVariant, seed: int) -> dict[str, float]:
  """One variant's loss per setting, trained with `seed`: the best flat temperature of config.flat_taus, or the
  log-position one for 'ssa' / 'ssa+<method>'."""
  config = ml_collections.ConfigDict({**config.to_dict(), "seed": seed})
  losses = {}
  for name, is_a_L in settings(config):
    if variant.ssa:
      losses[f"loss_{name}"] = fit(config, is_a_L, "log_position", kind=variant.kind)["loss"]
    else:
      losses[f"loss_{name}"] = min(fit(config, is_a_L, "flat", t, variant.kind)["loss"] for t in config.flat_taus)
  return losses


def parse(text: str) -> list[StudyVariant]:
  """--variants of this study (ConfigError naming the study for a name without a meaning here)."""
  return parse_variants("imbalance", text, SSA_MEANING)


def run(config: ml_collections.ConfigDict) -> dict:
  """Every power-law setting plus the quadrant instance; returns their rows (or config.variants' losses)."""
  if config.variants:
    return common.run_variants(parse(config.variants), (config.seed,), lambda v, s: run_variant(config, v, s),
                               metric_names(config))
  return {"settings": [run_setting(config, name, seq) for name, seq in settings(config)]}


def print_table(payload: dict) -> None:
  """Loss per setting and how close the learned tau_n gets to Prop. 2's formula (or each variant's losses)."""
  if payload["config"]["variants"]:
    return common.print_variants(payload, metric_names(ml_collections.ConfigDict(payload["config"])))
  print("\nsetting     kappa_n0->kappa_L  best flat   flat bound  log-position  free-position  max|tau_eff-formula|")
  for r in payload["settings"]:
    print(f"{r['setting']:10s}  {r['kappa_first']:5.2f}->{r['kappa_last']:5.2f}  {r['loss_flat']:10.5f}  "
          f"{r['flat_lower_bound']:10.5f}  {r['loss_log_position']:12.5f}  {r['loss_free_position']:13.1e}  "
          f"{r['free_tau_eff_max_abs_err']:10.3f}")


def plot(path: Path, payload: dict) -> None:
  """Learned effective tau_n against log(kappa_n) + log(alpha/(1-alpha)), one panel per setting."""
  plt = common.pyplot()
  rows = payload["settings"]
  fig, axes = plt.subplots(1, len(rows), figsize=(3.6 * len(rows), 3.4), squeeze=False)
  for ax, r in zip(axes[0], rows):
    ax.plot(r["positions"], r["formula_tau"], "k-", lw=2, label="log k_n + log(a/(1-a))")
    ax.plot(r["positions"], r["free_tau_eff"], "r.", ms=3, label="learned (free tau_n)")
    ax.plot(r["positions"], r["log_position_tau_eff"], "b--", lw=1, label="learned (b0 + b1 log n)")
    ax.set_title(f"{r['setting']}: flat {r['loss_flat']:.4f}, free {r['loss_free_position']:.1e}", fontsize=8)
    ax.set_xlabel("position n")
  axes[0][0].set_ylabel("effective tau_n (a-b)^T W x_n")
  axes[0][0].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: list[str] | None = None) -> None:
  """The command line: every field of default_config() is a --flag; writes OUT_DIR/imbalance.json and the figure."""
  common.run_study(argv, default_config(), __doc__.splitlines()[0], run, print_table, "imbalance", plot,
                   "imbalance_tau.png")


if __name__ == "__main__":
  cli_errors.run_argv(main)
