"""Paper Figure 2: query-key weight norms spec_W(x) = ||W^T x|| and attention spikiness, vanilla vs SSA.

For every checkpoint, on the first --tokens tokens of a text (default: the run's own validation split, in the
windows its validation reads; --text_file: a plain text file), per token, layer and head:

  spec_raw  = ||W^T x||_2 with W = W_q,h W_k,h^T (d x d, the head's combined query-key matrix, biases and
              the 1/sqrt(head_dim) logit scale left out as in the paper) and x the token's input to the
              attention layer, i.e. the residual stream *after* the layer's attention norm (what W_q sees).
              RoPE is left out: it rotates q against k by the relative position, so it changes W^T x per key
              pair; the paper's W has no position in it.
  spec_eff  = tau_q(x, n) * spec_raw, the *effective* weight tau(q) W_q W_k^T of the paper's Lemma 1
              discussion (tau_q = 1 for vanilla, so there spec_eff == spec_raw). Key temperatures (ssa.key)
              scale the key side, not W^T x, and are not included.
  opnorm    = ||W_q,h W_k,h^T||_2, the operator norm of the head's W (one number per layer and head), and
              opnorm_eff = tau_q(x, n) * opnorm per token.
  spikiness = ||s||_1 / (||s||_2^2 L) of the query's attention row s (softmax probabilities, so ||s||_1 = 1),
              L = the number of keys the query sees = its position in the window + 1 (causal attention).
              It lies in [1/L, 1]: 1 for a uniform row, 1/L for a one-hot row; lower = spikier. The first
              query of a window (L = 1) always scores 1; --min_keys drops the queries with fewer keys.

The attention rows are the model's own (its forward and ssa_jax.model.kernels' functions). Outputs:
norms.json (every number, and the text analysed), norms.png (distributions over tokens, each token's value
averaged over layers and heads, per checkpoint) and a console table; the first checkpoint is the reference.

  python -m ssa_jax.analysis.norms /tmp/study/vanilla /tmp/study/ssa --labels=vanilla,ssa --tokens=1000
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from ssa_jax.data.pipeline import make_lm_iterator
from ssa_jax.data.tokenizer import load_tokenizer
from ssa_jax.formats.checkpoint import load_model
from ssa_jax.formats.tokenizer_files import run_config_tokenizer
from ssa_jax.model.attention import temper_and_rotate
from ssa_jax.model.config import ModelConfig
from ssa_jax.model.kernels import attention_weights, weighted_values
from ssa_jax.model.methods import method_class
from ssa_jax.model.params import unrolled
from ssa_jax.runtime import cli_errors

Array = jax.Array


# ------------------------------------------------------------------------------------------ the model side
def analysis_config(cfg: ModelConfig) -> ModelConfig:
  """The checkpoint's config computing in float32, without remat, with the XLA kernel (exact rows on any device)."""
  return dataclasses.replace(cfg, dtype="float32", remat="none", attention_impl="xla")


def capture_layers(model, variables: dict, tokens_BT: Array) -> list[dict[str, Array]]:
  """Per layer: x_BTd (attention input after the norm), q/k/v before temperatures and RoPE, tau_* (B, T, heads), attn_out_BTd."""
  model, variables = unrolled(model, variables)
  _, state = model.apply(variables, tokens_BT, mutable=["intermediates"], capture_intermediates=lambda module, method:
                         method == "__call__" and module.name in ("attn_norm", "q", "k", "v", "attn"))
  inter = state["intermediates"]
  cfg = model.config
  B, T = tokens_BT.shape
  layers = []
  for i in range(cfg.num_layers):
    attn = inter[f"layers_{i}"]["attn"]
    out = {
        "x_BTd": inter[f"layers_{i}"]["attn_norm"]["__call__"][0],
        "q_BTHD": attn["q"]["__call__"][0],
        "k_BTKD": attn["k"]["__call__"][0],
        "v_BTKD": attn["v"]["__call__"][0],
        "attn_out_BTd": attn["__call__"][0][0],  # the module returns (output, cache)
    }
    for comp, heads in (("q", cfg.num_heads), ("k", cfg.num_kv_heads), ("v", cfg.num_kv_heads)):
      sown = attn.get(f"tau_{comp}")
      out[f"tau_{comp}_BTH"] = sown[0] if sown is not None else jnp.ones((B, T, heads), jnp.float32)
    layers.append(out)
  return layers


def tempered_qkv(cfg: ModelConfig, layer: dict[str, Array], positions_BT: Array) -> tuple[Array, Array, Array]:
  """The captured projections as the layer's kernel receives them (ssa_jax.model.attention.temper_and_rotate)."""
  proj = {"q": layer["q_BTHD"], "k": layer["k_BTKD"], "v": layer["v_BTKD"]}
  return temper_and_rotate(proj, {c: layer[f"tau_{c}_BTH"] for c in proj}, positions_BT, cfg)


def attention_rows(cfg: ModelConfig, layer: dict[str, Array], positions_BT: Array) -> Array:
  """Softmax attention rows (B, H, T, S) as the layer computes them (the model's own attention_weights)."""
  q_BTHD, k_BSKD, _ = tempered_qkv(cfg, layer, positions_BT)
  T = q_BTHD.shape[1]
  return attention_weights(q_BTHD, k_BSKD, jnp.tril(jnp.ones((1, T, T), bool)))


def attention_output(cfg: ModelConfig, attn_params, layer: dict[str, Array], probs_BHTS: Array) -> Array:
  """The layer's output rebuilt from `probs_BHTS` (values with tau_v, then the output projection): a check."""
  B, _, T, _ = probs_BHTS.shape
  _, _, v_BSKD = tempered_qkv(cfg, layer, jnp.broadcast_to(jnp.arange(T), (B, T)))  # RoPE leaves v alone
  ctx_BTHD = weighted_values(probs_BHTS, v_BSKD)
  out_BTd = jnp.einsum("bthd,hde->bte", ctx_BTHD, attn_params["o"]["kernel"])
  if "bias" in attn_params["o"]:
    out_BTd = out_BTd + attn_params["o"]["bias"]
  return out_BTd


def spikiness(probs_BHTS: Array) -> Array:
  """||s||_1 / (||s||_2^2 L) per query row, (B, H, T); L = number of keys the causal query sees (t + 1)."""
  T = probs_BHTS.shape[-2]
  keys_T = jnp.arange(1, T + 1, dtype=jnp.float32)
  return jnp.sum(jnp.abs(probs_BHTS), axis=-1) / (jnp.sum(jnp.square(probs_BHTS), axis=-1) * keys_T)


def spec_norms(cfg: ModelConfig, attn_params, x_BTd: Array) -> Array:
  """spec_W(x) = ||W^T x||_2 = ||W_k,h (W_q,h^T x)||_2 per head, (B, T, H), with W = W_q,h W_k,h^T (no bias)."""
  H, K = cfg.num_heads, cfg.num_kv_heads
  qx_BTHD = jnp.einsum("btd,dhe->bthe", x_BTd.astype(jnp.float32), attn_params["q"]["kernel"])
  B, T, _, D = qx_BTHD.shape
  wtx_BTKGd = jnp.einsum("btkge,dke->btkgd", qx_BTHD.reshape(B, T, K, H // K, D), attn_params["k"]["kernel"])
  return jnp.linalg.norm(wtx_BTKGd, axis=-1).reshape(B, T, H)


def weight_opnorms(cfg: ModelConfig, attn_params) -> np.ndarray:
  """||W_q,h W_k,h^T||_2 per head, (H,): from the QR factors, so only head_dim x head_dim SVDs."""
  H, K = cfg.num_heads, cfg.num_kv_heads
  wq = np.asarray(attn_params["q"]["kernel"], np.float64)  # (d, H, D)
  wk = np.asarray(attn_params["k"]["kernel"], np.float64)  # (d, K, D)
  norms = np.zeros(H)
  for h in range(H):
    _, rq = np.linalg.qr(wq[:, h, :])
    _, rk = np.linalg.qr(wk[:, h // (H // K), :])
    norms[h] = np.linalg.svd(rq @ rk.T, compute_uv=False)[0]
  return norms


def analyse_tokens(model, variables: dict, tokens_NT: np.ndarray, min_keys: int = 1) -> dict[str, np.ndarray]:
  """Per-token arrays over windows `tokens_NT` (N windows of T tokens, each from position 0).

  Returns spec_raw / spec_eff / opnorm_eff / tau_q (tokens, layers, heads), spikiness (queries, layers,
  heads) for the queries seeing >= min_keys keys, and opnorm (layers, heads).
  """
  model, variables = unrolled(model, variables)
  cfg = model.config
  tokens_NT = jnp.asarray(tokens_NT, jnp.int32)
  N, T = tokens_NT.shape
  positions_NT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (N, T))
  opnorm_LH = np.stack([weight_opnorms(cfg, variables["params"][f"layers_{i}"]["attn"]) for i in range(cfg.num_layers)])

  @jax.jit
  def per_layer(variables, tokens_NT):
    layers = capture_layers(model, variables, tokens_NT)
    spec, tau, spiky = [], [], []
    for i, layer in enumerate(layers):
      spec.append(spec_norms(cfg, variables["params"][f"layers_{i}"]["attn"], layer["x_BTd"]))
      tau.append(layer["tau_q_BTH"])
      if softmax_rows:
        spiky.append(jnp.transpose(spikiness(attention_rows(cfg, layer, positions_NT)), (0, 2, 1)))  # (B, T, H)
    return jnp.stack(spec, 2), jnp.stack(tau, 2), jnp.stack(spiky, 2) if spiky else None  # (B, T, layers, H)

  # Only a method whose attention rows are softmax(q k^T) (e.g. an output gate) has them rebuilt here; the others'
  # rows (a difference of two maps, a decayed or masked softmax) are not, and their spikiness is reported missing.
  softmax_rows = method_class(cfg).softmax_rows
  spec_NTLH, tau_NTLH, spiky_NTLH = per_layer(variables, tokens_NT)
  spec_raw, tau_q = (np.asarray(a, np.float64).reshape(N * T, *a.shape[2:]) for a in (spec_NTLH, tau_NTLH))
  spiky = None
  if spiky_NTLH is not None:
    spiky_NTLH = np.asarray(spiky_NTLH, np.float64)
    spiky = spiky_NTLH[:, np.arange(T) + 1 >= min_keys].reshape(-1, *spiky_NTLH.shape[2:])
  return {"spec_raw": spec_raw, "spec_eff": tau_q * spec_raw, "tau_q": tau_q, "spikiness": spiky,
          "opnorm": opnorm_LH, "opnorm_eff": tau_q * opnorm_LH[None]}


def analyse(model, variables: dict, tokens: list[int], window: int, min_keys: int = 1, batch_size: int = 8
            ) -> dict[str, np.ndarray]:
  """`analyse_tokens` over `tokens` cut into non-overlapping windows of `window` (the last one may be shorter)."""
  if window <= 0 or window > model.config.max_seq_len:
    raise ValueError(f"--window: expected 1..max_seq_len={model.config.max_seq_len}, got {window}")
  full = len(tokens) // window
  full_NT = np.asarray(tokens[: full * window], np.int32).reshape(full, window)
  chunks = [full_NT[i:i + batch_size] for i in range(0, full, batch_size)]
  if len(tokens) % window:
    chunks.append(np.asarray(tokens[full * window:], np.int32)[None])
  parts = [analyse_tokens(model, variables, c, min_keys) for c in chunks]
  joined = lambda k: None if parts[0][k] is None else np.concatenate([p[k] for p in parts])  # noqa: E731
  return {k: parts[0][k] if k == "opnorm" else joined(k) for k in parts[0]}


# ------------------------------------------------------------------------------------------ text and tokens
def validation_windows(run_config: dict, tokenizer, num_tokens: int) -> np.ndarray:
  """(N, seq_len) int32: the first ceil(num_tokens / seq_len) windows of the run's validation split, as its
  validation reads them (config.data, config.train.seq_len)."""
  if not isinstance(run_config.get("data"), dict) or not isinstance(run_config.get("train"), dict):
    raise ValueError("--text_file: required, the checkpoint's run config has no data / train section to take "
                     "the validation split from (e.g. an imported Hugging Face model)")
  data, t = ml_collections.ConfigDict(run_config["data"]), run_config["train"]
  seq_len = int(t["seq_len"])
  need = max(1, math.ceil(num_tokens / seq_len))
  it = make_lm_iterator(data, split=data.validation_split, seq_len=seq_len,
                        global_batch_size=int(t["global_batch_size"]), process_index=0, process_count=1,
                        tokenizer=tokenizer, repeat=False)
  rows: list[np.ndarray] = []
  try:
    for batch in it:
      rows.extend(np.asarray(batch["tokens"])[:, :seq_len])
      if len(rows) >= need:
        break
  finally:
    it.close()
  if not rows:
    raise ValueError(f"config.data.validation_split: {data.validation_split!r} of {data.path or 'the demo corpus'} "
                     "yields no validation window to analyse")
  return np.stack(rows[:need]).astype(np.int32)


def text_tokens(tokenizer, run_config: dict, num_tokens: int, text_file: str = "") -> tuple[list[int], str]:
  """(the first `num_tokens` tokens, which text they are): of `text_file`, else of the run's validation split."""
  if text_file:
    path = epath.Path(text_file)
    if not path.is_file():
      raise FileNotFoundError(f"--text_file: {text_file} is not a file")
    tokens, source = tokenizer.encode(path.read_text(), add_bos=None), text_file
  else:
    tokens = validation_windows(run_config, tokenizer, num_tokens).reshape(-1).tolist()
    data = run_config["data"]
    source = f"the {data.get('validation_split')!r} split of {data.get('path') or 'the demo corpus'} (the run's own)"
  if len(tokens) < num_tokens:
    raise ValueError(f"--tokens: asked for {num_tokens} tokens, {source} has only {len(tokens)}")
  return tokens[:num_tokens], source


# ------------------------------------------------------------------------------------------ summaries
def summarise(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
  """Means (over tokens, layers, heads), per-layer means and the per-token values plotted."""
  s: dict[str, Any] = {}
  for key in ("spec_raw", "spec_eff", "opnorm_eff", "tau_q", "spikiness"):
    a = arrays[key]
    if a is None:  # spikiness of a method whose rows are not softmax rows (analyse_tokens)
      s[key] = {"mean": None, "median_per_token": None, "per_layer": [], "per_token": []}
      continue
    s[key] = {"mean": float(a.mean()), "median_per_token": float(np.median(a.mean(axis=(1, 2)))),
              "per_layer": [float(v) for v in a.mean(axis=(0, 2))],
              "per_token": [float(v) for v in a.mean(axis=(1, 2))]}
  s["opnorm"] = {"mean": float(arrays["opnorm"].mean()), "per_layer_head": arrays["opnorm"].tolist()}
  return s


def plot(path: Path, results: list[dict]) -> None:
  """Violins over tokens (each token: mean over layers and heads) of spec_raw, spec_eff and spikiness."""
  import matplotlib  # optional heavy dependency, needed only for the figure
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = (("spec_raw", "raw ||W^T x|| (W = W_q W_k^T)"), ("spec_eff", "effective tau_q(x) ||W^T x||"),
            ("spikiness", "spikiness ||s||_1/(||s||_2^2 L), lower = spikier"))
  fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
  labels = [r["label"] for r in results]
  for ax, (key, title) in zip(axes, panels):
    data = [np.asarray(r["summary"][key]["per_token"]) for r in results]
    shown = [j for j, d in enumerate(data) if d.size]  # a method without softmax rows has no spikiness
    if shown:
      ax.violinplot([data[j] for j in shown], positions=[j + 1 for j in shown], showmeans=False, showextrema=False)
    for j in shown:
      ax.hlines(data[j].mean(), j + 0.7, j + 1.3, colors="k", linestyles="--", lw=1)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    ax.set_title(title, fontsize=9)
  fig.suptitle(f"per-token mean over layers and heads, {results[0]['num_tokens']} tokens (dashed: mean)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(checkpoints: list[str], labels: list[str], num_tokens: int = 1000, text_file: str = "",
        tokenizer: str = "", window: int = 0, min_keys: int = 1, output_dir: str = "runs/norms") -> list[dict]:
  """Analyses every checkpoint (on `text_file`, else its validation split) as main does; returns the results."""
  if len(labels) != len(checkpoints):
    raise ValueError(f"--labels: expected {len(checkpoints)} labels, got {len(labels)}")
  if num_tokens <= 0:
    raise ValueError(f"--tokens: expected a positive int, got {num_tokens}")
  for path in checkpoints:  # every path checked before the first (slow) analysis
    if not Path(path).exists():
      raise FileNotFoundError(f"checkpoint {path}: does not exist (expected a training workdir, a checkpoint "
                              "root or a step directory)")
  results = []
  for path, label in zip(checkpoints, labels):
    model, variables, run_config = load_model(path)
    model = type(model)(analysis_config(model.config))
    cfg = model.config
    tok_path = tokenizer or run_config_tokenizer(run_config)
    if not tok_path:
      raise ValueError("--tokenizer: required, the checkpoint's config names no tokenizer (config.data.tokenizer_path)")
    tokens, source = text_tokens(load_tokenizer(tok_path), run_config, num_tokens, text_file)
    print(f"{label}: {len(tokens)} tokens of {source}")
    win = min(window or int((run_config.get("train") or {}).get("seq_len") or cfg.max_seq_len), cfg.max_seq_len)
    arrays = analyse(model, variables, tokens, win, min_keys)
    results.append({"label": label, "checkpoint": str(path), "text": source, "num_tokens": len(tokens),
                    "window": win, "min_keys": min_keys, "ssa": dataclasses.asdict(cfg.ssa),
                    "num_layers": cfg.num_layers, "num_heads": cfg.num_heads, "summary": summarise(arrays)})
  for r in results:  # reference / run: the paper's '~3x smaller with SSA'
    r["ratios_vs_first"] = {k: results[0]["summary"][k]["mean"] / r["summary"][k]["mean"]
                            for k in ("spec_raw", "spec_eff", "opnorm", "opnorm_eff")}
  out = Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "norms.json").write_text(json.dumps(results, indent=1) + "\n")
  plot(out / "norms.png", results)
  return results


def main(argv: list[str] | None = None) -> list[dict]:
  """The command line: runs the analysis and prints one line per checkpoint."""
  parser = cli_errors.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("checkpoints", nargs="+", help="training workdirs, checkpoint roots or step dirs")
  parser.add_argument("--labels", default="", help="comma-separated, one per checkpoint (default: dir names)")
  parser.add_argument("--text_file", default="",
                      help="plain text (default: each run's own validation split, config.data.validation_split)")
  parser.add_argument("--tokenizer", default="", help="tokenizer path (default: the one the run trained with)")
  parser.add_argument("--tokens", type=int, default=1000, help="number of tokens (queries) analysed")
  parser.add_argument("--window", type=int, default=0,
                      help="tokens per forward window (default: the run's train.seq_len, capped at max_seq_len)")
  parser.add_argument("--min_keys", type=int, default=1, help="spikiness over queries seeing at least this many keys")
  parser.add_argument("--output_dir", default="runs/norms")
  args = parser.parse_args(argv)
  labels = args.labels.split(",") if args.labels else [Path(c.rstrip("/")).name for c in args.checkpoints]
  results = run(args.checkpoints, labels, args.tokens, args.text_file, args.tokenizer, args.window, args.min_keys,
                args.output_dir)
  print(f"{'run':12s} {'spec_raw':>9s} {'spec_eff':>9s} {'||W||':>8s} {'tau||W||':>9s} {'tau_q':>6s} "
        f"{'spiky':>6s} {'ref/raw':>8s} {'ref/eff':>8s}")
  for r in results:
    s, q = r["summary"], r["ratios_vs_first"]
    spiky = "-" if s["spikiness"]["mean"] is None else f"{s['spikiness']['mean']:6.3f}"  # no softmax rows
    print(f"{r['label']:12s} {s['spec_raw']['mean']:9.4f} {s['spec_eff']['mean']:9.4f} {s['opnorm']['mean']:8.4f} "
          f"{s['opnorm_eff']['mean']:9.4f} {s['tau_q']['mean']:6.3f} {spiky:>6s} "
          f"{q['spec_raw']:7.2f}x {q['spec_eff']:7.2f}x")
  print("spec_* = ||W^T x|| per token/layer/head (raw: W = W_q W_k^T; eff: tau_q(x) W); ||W||: operator norm; "
        "ref/x: first run's mean / this run's")
  print(f"wrote {Path(args.output_dir) / 'norms.json'} and {Path(args.output_dir) / 'norms.png'}")
  return results


if __name__ == "__main__":
  cli_errors.run_argv(main)
