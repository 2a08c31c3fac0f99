"""Denoising study (paper Sec. 4.3, Table 2): vanilla vs value-selective attention, naive average, Bayes.

K = d tokens e_1..e_K (standard basis); q ~ Unif[K], y = e_q; x_L = e_q + z_L, every other x_i is e_q + z_i
with probability alpha, else z_i; z ~ N(0, sigma^2 I). Risk E||y - yhat/||yhat|| ||^2.
Vanilla: yhat = sum_i softmax_i(x_i^T W x_L) W_v x_i. Value-selective: the value of token i is multiplied by
the paper's selection function 1[max_j x_ij >= 1/2] (a fixed value temperature). Both train W, W_v with Adam.

Attention methods (--variants, ssa_jax.experiments.methods_adapter): the method's own module replaces the
softmax (a causal full forward, read at the last token; query W x_L, keys x_i, values W_v x_i); 'ssa+<method>'
gates the values by the selection function first. yhat is the mean of the heads' outputs (one head, two for
differential, whose second sub-head has its own W and W_v).

  python -m ssa_jax.experiments.denoise [--seq_len 32] [--sigma 0.3] [--steps 2000] [--out_dir runs/denoise] \
      [--variants=vanilla,ssa,gated]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssa_jax.experiments import common
from ssa_jax.experiments.methods_adapter import MethodAttention, StudyVariant, kernel_query, method_heads, \
    parse_variants, stack_heads
from ssa_jax.runtime import cli_errors

MODELS = ("vanilla", "value_selective", "naive_average", "bayes")
SSA_MEANING = "value selection (the paper's gate 1[max_j x_ij >= gate_threshold] on each value)"
METRICS = ("risk",)


def default_config() -> ml_collections.ConfigDict:
  """Hyper-parameters of the denoising study (every field is a --flag)."""
  c = ml_collections.ConfigDict()
  c.dim = 8  # K = d = 8 as in the paper
  c.seq_len = 32  # paper: unreported
  c.alpha = 0.25  # probability that a non-final token carries the signal
  c.sigma = 0.3  # paper: below 1/sqrt(log d) = 0.69; 0.3 leaves the gate ~30% false positives per noise token
  c.gate_threshold = 0.5
  c.seeds = (0, 1, 2)
  c.steps = 2000
  c.batch_size = 256
  c.learning_rate = 3e-3  # paper: Adam 1e-4 (steps unreported)
  c.eval_size = 20000
  c.log_every = 500
  c.out_dir = "runs/denoise"
  # Comma-separated variants as the comparison names them (vanilla, ssa, gated, diff, ssa+gated, ...);
  # '' = the paper's Table 2 (vanilla, value-selective, naive averaging, Bayes).
  c.variants = ""
  return c


def sample(key: jax.Array, config: ml_collections.ConfigDict, batch_size: int) -> tuple[jax.Array, ...]:
  """Returns x_BLd, y_Bd and the ground-truth signal mask signal_BL."""
  k_q, k_sig, k_z = jax.random.split(key, 3)
  d, L = config.dim, config.seq_len
  q_B = jax.random.randint(k_q, (batch_size,), 0, d)
  y_Bd = jax.nn.one_hot(q_B, d)
  signal_BL = jax.random.bernoulli(k_sig, config.alpha, (batch_size, L)).at[:, -1].set(True)
  z_BLd = config.sigma * jax.random.normal(k_z, (batch_size, L, d))
  x_BLd = z_BLd + signal_BL[..., None] * y_Bd[:, None, :]
  return x_BLd, y_Bd, signal_BL


def init_params(key: jax.Array, dim: int) -> dict:
  """Key-query matrix W and value matrix W_v (same init for both attention models)."""
  k_w, k_v = jax.random.split(key)
  return {"w": jax.random.normal(k_w, (dim, dim)) / np.sqrt(dim), "wv": jax.random.normal(k_v, (dim, dim)) / np.sqrt(dim)}


def value_gate(x_BLd: jax.Array, threshold: float) -> jax.Array:
  """The paper's selection function 1[max_j x_ij >= threshold] (B, L)."""
  return (x_BLd.max(-1) >= threshold).astype(x_BLd.dtype)


def attention_output(params: dict, x_BLd: jax.Array, gate_BL: jax.Array | None) -> jax.Array:
  """1-layer 1-head attention read at the last token; gate_BL scales the values (value-selective)."""
  scores_BL = jnp.einsum("bld,de,be->bl", x_BLd, params["w"], x_BLd[:, -1])
  v_BLd = x_BLd @ params["wv"]
  if gate_BL is not None:
    v_BLd = gate_BL[..., None] * v_BLd
  return jnp.einsum("bl,bld->bd", jax.nn.softmax(scores_BL, -1), v_BLd)


def risk(yhat_Bd: jax.Array, y_Bd: jax.Array) -> jax.Array:
  """Mean of ||y - yhat/||yhat|| ||^2 (a zero yhat counts as the worst direction-free guess, risk 1 + 1)."""
  norm_B = jnp.linalg.norm(yhat_Bd, axis=-1, keepdims=True)
  unit_Bd = jnp.where(norm_B > 0, yhat_Bd / jnp.where(norm_B > 0, norm_B, 1.0), 0.0)
  return jnp.sum((y_Bd - unit_Bd) ** 2, -1).mean()


def estimate(model: str, params: dict | None, x_BLd: jax.Array, signal_BL: jax.Array,
             config: ml_collections.ConfigDict) -> jax.Array:
  """yhat for one of MODELS."""
  if model == "vanilla":
    return attention_output(params, x_BLd, None)
  if model == "value_selective":
    return attention_output(params, x_BLd, value_gate(x_BLd, config.gate_threshold))
  if model == "naive_average":
    return x_BLd.mean(1)
  mask_BL = signal_BL.astype(x_BLd.dtype)  # bayes: the average of the tokens that carry the signal
  return jnp.einsum("bl,bld->bd", mask_BL, x_BLd) / mask_BL.sum(-1, keepdims=True)


def trained_risk(config: ml_collections.ConfigDict, seed: int, params: dict, yhat, label: str) -> float:
  """Trains `params` of yhat(params, x_BLd) with Adam on the seed's batches; the risk on its held-out set."""
  _, k_train, k_eval = jax.random.split(jax.random.PRNGKey(seed), 3)

  def loss_fn(p, k):
    x_BLd, y_Bd, _ = sample(k, config, config.batch_size)
    return risk(yhat(p, x_BLd), y_Bd)

  params, _ = common.train(loss_fn, params, optax.adam(config.learning_rate), config.steps, k_train,
                           log_every=config.log_every, label=label)
  x_eval, y_eval, _ = sample(k_eval, config, config.eval_size)
  return float(risk(yhat(params, x_eval), y_eval))


def run_seed(config: ml_collections.ConfigDict, seed: int) -> dict[str, float]:
  """Trains the two attention models for one seed and evaluates all four on one held-out set."""
  k_init, _, k_eval = jax.random.split(jax.random.PRNGKey(seed), 3)
  x_eval, y_eval, sig_eval = sample(k_eval, config, config.eval_size)
  risks = {}
  for model in MODELS:
    if model in ("vanilla", "value_selective"):
      yhat = lambda p, x_BLd, model=model: estimate(model, p, x_BLd, None, config)  # noqa: E731
      risks[model] = trained_risk(config, seed, init_params(k_init, config.dim), yhat, f"{model} seed {seed}")
    else:
      risks[model] = float(risk(estimate(model, None, x_eval, sig_eval, config), y_eval))
  print(f"seed {seed}: " + "  ".join(f"{m} {v:.4f}" for m, v in risks.items()), flush=True)
  return risks


def method_estimate(params: dict, x_BLd: jax.Array, attn: MethodAttention, gate_BL: jax.Array | None) -> jax.Array:
  """yhat of a method variant: the mean over heads of the method's output at the last token (query W x_L,
  keys x_i, values W_v x_i, gated by gate_BL when given)."""
  heads = params["w"].shape[0]
  q_BLHD = kernel_query(jnp.einsum("blf,hef->blhe", x_BLd, params["w"]))  # x_i . W x_L, no 1/sqrt(d)
  k_BLHD = jnp.broadcast_to(x_BLd[:, :, None], q_BLHD.shape[:2] + (heads, x_BLd.shape[-1]))
  v_BLHD = jnp.einsum("bld,hde->blhe", x_BLd, params["wv"])
  if gate_BL is not None:
    v_BLHD = gate_BL[..., None, None] * v_BLHD
  return attn(params["method"], x_BLd, q_BLHD, k_BLHD, v_BLHD)[:, -1].mean(1)


def run_variant(config: ml_collections.ConfigDict, variant: StudyVariant, seed: int) -> dict[str, float]:
  """The held-out risk of one variant trained with seed `seed` ('vanilla' / 'ssa': the paper's two models)."""
  k_init = jax.random.split(jax.random.PRNGKey(seed), 3)[0]
  params = init_params(k_init, config.dim)
  gate = lambda x_BLd: value_gate(x_BLd, config.gate_threshold) if variant.ssa else None  # noqa: E731
  label = f"{variant.name} seed {seed}"
  if not variant.uses_method:
    yhat = lambda p, x_BLd: attention_output(p, x_BLd, gate(x_BLd))  # noqa: E731
    return {"risk": trained_risk(config, seed, params, yhat, label)}
  attn = MethodAttention(variant.kind, config.dim, method_heads(variant.kind), config.dim, config.seq_len)
  k_heads, k_method = jax.random.split(jax.random.fold_in(k_init, 1))
  for name, k in zip(("w", "wv"), jax.random.split(k_heads)):
    params[name] = stack_heads(k, params[name], attn.cfg.num_heads, 1.0 / np.sqrt(config.dim))
  zeros_BLHD = jnp.zeros((1, config.seq_len, attn.cfg.num_heads, config.dim))
  params["method"] = attn.init(k_method, jnp.zeros((1, config.seq_len, config.dim)), zeros_BLHD, zeros_BLHD,
                               zeros_BLHD)
  yhat = lambda p, x_BLd: method_estimate(p, x_BLd, attn, gate(x_BLd))  # noqa: E731
  return {"risk": trained_risk(config, seed, params, yhat, label)}


def parse(text: str) -> list[StudyVariant]:
  """--variants of this study (ConfigError naming the study for a name without a meaning here)."""
  return parse_variants("denoise", text, SSA_MEANING)


def run(config: ml_collections.ConfigDict) -> dict:
  """All seeds; returns the risks per seed and their summary (or config.variants' risks)."""
  if config.variants:
    return common.run_variants(parse(config.variants), config.seeds, lambda v, s: run_variant(config, v, s), METRICS)
  per_seed = [{"seed": s, **run_seed(config, s)} for s in config.seeds]
  return {"runs": per_seed, "summary": {m: common.mean_std([r[m] for r in per_seed]) for m in MODELS}}


def print_table(payload: dict) -> None:
  """Prints Table 2 (or each variant's risk)."""
  if payload["config"]["variants"]:
    return common.print_variants(payload, METRICS)
  s = payload["summary"]
  print("\n" + "  ".join(f"{m:>16s}" for m in MODELS))
  print("  ".join(f"{s[m]['mean']:9.4f}+-{s[m]['std']:.4f}" for m in MODELS))


def main(argv: list[str] | None = None) -> None:
  """The command line: every field of default_config() is a --flag; writes OUT_DIR/denoise.json."""
  common.run_study(argv, default_config(), __doc__.splitlines()[0], run, print_table, "denoise")


if __name__ == "__main__":
  cli_errors.run_argv(main)
