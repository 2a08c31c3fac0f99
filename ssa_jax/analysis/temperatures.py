"""The paper's Figure 1: text with each token coloured by its learned query temperature tau_q (HTML and PNG).

  python -m ssa_jax.analysis.temperatures --hf_dir=DIR --text="Some text." --layers=0,-1 --out=/tmp/tau
  python -m ssa_jax.analysis.temperatures --checkpoint=WORKDIR --text_file=page.txt

Per chosen layer, tau_q (the model's `intermediates`, (B, T, H)) averaged over heads; the colour scale is
shared by the layers of one rendering. Writes OUT/temperatures.html, OUT/temperatures.png and .json.
"""

from __future__ import annotations

import argparse
import html
import json

import jax.numpy as jnp
import numpy as np
from etils import epath


def token_temperatures(model, params, ids: list[int]) -> np.ndarray:
  """tau_q averaged over heads: float32 (num_layers, T). Fails when the model scales no queries."""
  if "q" not in model.config.ssa.components:
    raise ValueError("the model has no query temperatures (config.ssa: enabled with query=True is needed)")
  _, state = model.apply({"params": params}, jnp.asarray([ids], jnp.int32), mutable=["intermediates"])
  inter = state["intermediates"]
  rows = [np.asarray(inter[f"layers_{i}"]["attn"]["tau_q"][0])[0].mean(-1) for i in range(model.config.num_layers)]
  return np.stack(rows).astype(np.float32)


def parse_layers(spec: str, num_layers: int) -> list[int]:
  """'all' or comma-separated indices (negative from the end) -> sorted unique layer indices."""
  if spec.strip() == "all":
    return list(range(num_layers))
  out = []
  for part in spec.split(","):
    i = int(part)
    if not -num_layers <= i < num_layers:
      raise ValueError(f"--layers: {i} is outside the model's {num_layers} layers")
    out.append(i % num_layers)
  return sorted(set(out))


def render_html(pieces: list[str], tau_LT: np.ndarray, layers: list[int], cmap: str) -> str:
  """One paragraph per layer, each token's background its temperature on the shared colour scale."""
  import matplotlib
  from matplotlib import colors

  lo, hi = float(tau_LT[layers].min()), float(tau_LT[layers].max())
  norm, cm = colors.Normalize(lo, hi if hi > lo else lo + 1e-6), matplotlib.colormaps[cmap]
  parts = ["<html><head><meta charset='utf-8'><title>query temperatures</title></head>",
           "<body style='font-family:monospace;line-height:1.9'>",
           f"<p>tau_q (mean over heads); colour scale {lo:.4f} .. {hi:.4f} ({cmap})</p>"]
  for layer in layers:
    spans = []
    for piece, tau in zip(pieces, tau_LT[layer]):
      spans.append(f"<span title='{tau:.4f}' style='background:{colors.to_hex(cm(norm(tau)))}'>"
                   f"{html.escape(piece).replace(chr(10), '&#8629;<br>')}</span>")
    parts.append(f"<h3>layer {layer}</h3><p style='white-space:pre-wrap'>{''.join(spans)}</p>")
  return "\n".join(parts + ["</body></html>"])


def render_png(pieces: list[str], tau_LT: np.ndarray, layers: list[int], cmap: str, path: str,
               per_line: int = 16) -> None:
  """A grid of token boxes per layer, coloured by temperature, with a colour bar."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib import colors

  lo, hi = float(tau_LT[layers].min()), float(tau_LT[layers].max())
  norm, cm = colors.Normalize(lo, hi if hi > lo else lo + 1e-6), matplotlib.colormaps[cmap]
  n_lines = -(-len(pieces) // per_line)
  fig, axes = plt.subplots(len(layers), 1, figsize=(per_line * 0.9, 0.45 * n_lines * len(layers) + 1.2),
                           squeeze=False)
  for ax, layer in zip(axes[:, 0], layers):
    for k, (piece, tau) in enumerate(zip(pieces, tau_LT[layer])):
      r, c = divmod(k, per_line)
      ax.text(c + 0.5, n_lines - r - 0.5, piece.replace("\n", "\\n")[:10], ha="center", va="center", fontsize=8,
              bbox=dict(boxstyle="square,pad=0.25", fc=cm(norm(tau)), ec="none"))
    ax.set_xlim(0, per_line)
    ax.set_ylim(0, n_lines)
    ax.axis("off")
    ax.set_title(f"layer {layer}: query temperature (mean over heads)", fontsize=9)
  fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cm), ax=axes[:, 0].tolist(), fraction=0.02, label="tau_q")
  fig.savefig(path, dpi=130, bbox_inches="tight")
  plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
  """The command line: renders the text and returns what it wrote into temperatures.json."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--hf_dir", default="", help="Hugging Face directory of an SSA model (exported by ssa_jax.hf)")
  parser.add_argument("--checkpoint", default="", help="ssa-jax checkpoint (workdir, root or step dir)")
  parser.add_argument("--tokenizer", default="", help="tokenizer path when the source names none")
  parser.add_argument("--text", default="", help="text to render")
  parser.add_argument("--text_file", default="", help="file holding the text (instead of --text)")
  parser.add_argument("--layers", default="0,-1", help="comma-separated layer indices (negative from the end), or 'all'")
  parser.add_argument("--max_tokens", type=int, default=512, help="tokens rendered at most")
  parser.add_argument("--out", default="temperatures", help="output directory")
  parser.add_argument("--cmap", default="coolwarm", help="matplotlib colour map")
  args = parser.parse_args(argv)

  from ssa_jax.data.tokenizer import load_tokenizer
  from ssa_jax.evaluate import ModelSource, check_vocab, load_model

  text = args.text or (epath.Path(args.text_file).read_text() if args.text_file else "")
  if not text:
    parser.error("give --text or --text_file")
  model, params, own_tok = load_model(ModelSource(hf_dir=args.hf_dir, checkpoint=args.checkpoint).validate())
  tok_path = args.tokenizer or own_tok
  if not tok_path:
    parser.error("the model names no tokenizer: pass --tokenizer=PATH")
  tokenizer = load_tokenizer(tok_path)
  check_vocab(tokenizer, model.config.vocab_size)
  ids = tokenizer.encode(text)[: min(args.max_tokens, model.config.max_seq_len)]
  tau_LT = token_temperatures(model, params, ids)
  layers = parse_layers(args.layers, model.config.num_layers)
  pieces = [tokenizer.decode([i]) for i in ids]
  out = epath.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "temperatures.html").write_text(render_html(pieces, tau_LT, layers, args.cmap))
  render_png(pieces, tau_LT, layers, args.cmap, str(out / "temperatures.png"))
  written = {"tokens": pieces, "ids": ids, "tau_q_mean_over_heads": {str(l): tau_LT[l].tolist() for l in layers}}
  (out / "temperatures.json").write_text(json.dumps(written))
  print(f"wrote {out}/temperatures.html, temperatures.png, temperatures.json ({len(ids)} tokens, layers {layers})")
  return written


if __name__ == "__main__":
  main()
