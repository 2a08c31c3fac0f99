"""The paper's Figure 1: text with each token coloured by tau_q, its learned INVERSE query temperature (HTML, PNG).

  python -m ssa_jax.analysis.temperatures --hf_dir=DIR --text="Some text." --layers=0,-1 --out=/tmp/tau
  python -m ssa_jax.analysis.temperatures --checkpoint=WORKDIR --demo_sample --out=tau

tau_q multiplies the queries, so it scales a token's attention logits: a higher tau_q (red in the default
colour map) means sharper, more selective attention; a lower one (blue) flatter attention. The layers of one
rendering share the colour scale; tokens are laid out as running text. Writes OUT/temperatures.html,
OUT/temperatures.png and .json.
"""

from __future__ import annotations

import html
import json
import os
from typing import NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np
from etils import epath

from ssa_jax.data import demo
from ssa_jax.data.tokenizer import load_tokenizer
from ssa_jax.evaluate import ModelSource, load_model
from ssa_jax.formats.tokenizer_files import check_vocab
from ssa_jax.model.params import unstack_layers
from ssa_jax.runtime import cli_errors

MEANING = "tau_q, the inverse query temperature (mean over heads): higher = sharper attention"
NEWLINE_MARK = "\u21b5"  # the visible end of a line that ended with a newline token
# DejaVu Sans Mono (matplotlib's bundled monospace font) advances 1233/2048 em per character.
MONO_ADVANCE_EM = 1233 / 2048


def token_temperatures(model, variables: dict, ids: list[int]) -> np.ndarray:
  """tau_q averaged over heads: float32 (num_layers, T). Fails when the model scales no queries."""
  if "q" not in model.config.ssa.components:
    raise ValueError("the model has no query temperatures (config.ssa: enabled with query=True is needed)")
  _, state = model.apply(variables, jnp.asarray([ids], jnp.int32), mutable=["intermediates"])
  inter = unstack_layers(state["intermediates"], model.config.num_layers)  # scan_layers sows stacked taus
  rows = [np.asarray(inter[f"layers_{i}"]["attn"]["tau_q"][0])[0].mean(-1) for i in range(model.config.num_layers)]
  return np.stack(rows).astype(np.float32)


def decoded_pieces(decode, ids: Sequence[int]) -> list[str]:
  """Each token's share of `decode(ids)`: the text decoding adds when the token is appended (joined = decode(ids)).

  Decoding tokens one by one loses what a tokenizer does across tokens: SentencePiece drops a piece's leading
  space, and a byte-level BPE shows half a multi-byte character as U+FFFD. Here a token whose bytes complete
  no character yet gets '' and the token completing it gets the whole character.
  """
  full = decode(list(ids))
  bounds = [0]
  for t in range(1, len(ids)):
    common = len(os.path.commonprefix([decode(list(ids[:t])), full]))
    bounds.append(max(bounds[-1], common))  # a prefix ending in a partial character stops before it
  bounds.append(len(full))
  return [full[bounds[t]:bounds[t + 1]] for t in range(len(ids))]


class Segment(NamedTuple):
  """A run of one token's characters on one line of the running-text layout."""

  token: int
  line: int
  col: int
  text: str


def layout_running_text(pieces: Sequence[str], width: int) -> list[Segment]:
  """Lays token pieces out as prose: word wrap at `width` characters, newlines kept (shown as a mark).

  Words are broken only when longer than a line; spaces that would overflow a line are dropped there.
  """
  if width < 1:
    raise ValueError(f"width: expected >= 1 character, got {width}")
  chars = [(ch, k) for k, piece in enumerate(pieces) for ch in piece.replace("\t", " ").replace("\r", "")]
  segments: list[Segment] = []
  line, col = 0, 0

  def put(ch: str, tok: int) -> None:
    nonlocal line, col
    if col >= width:
      line, col = line + 1, 0
    last = segments[-1] if segments else None
    if last and last.token == tok and last.line == line and last.col + len(last.text) == col:
      segments[-1] = last._replace(text=last.text + ch)
    else:
      segments.append(Segment(tok, line, col, ch))
    col += 1

  i = 0
  while i < len(chars):
    ch, tok = chars[i]
    if ch == "\n":
      put(NEWLINE_MARK, tok)
      line, col, i = line + 1, 0, i + 1
    elif ch == " ":
      if col < width:
        put(ch, tok)
      i += 1
    else:
      j = i
      while j < len(chars) and chars[j][0] not in (" ", "\n"):
        j += 1
      if col > 0 and col + (j - i) > width:  # start the word on a fresh line; break it only if longer than one
        line, col = line + 1, 0
      for ch, tok in chars[i:j]:
        put(ch, tok)
      i = j
  return segments


def parse_layers(spec: str, num_layers: int) -> list[int]:
  """'all' or comma-separated indices (negative from the end) -> sorted unique layer indices."""
  if spec.strip() == "all":
    return list(range(num_layers))
  layers = set()
  for i in map(int, spec.split(",")):
    if not -num_layers <= i < num_layers:
      raise ValueError(f"--layers: {i} is outside the model's {num_layers} layers")
    layers.add(i % num_layers)
  return sorted(layers)


def _scale(tau_LT: np.ndarray, layers: list[int], cmap: str):
  """The colour map and the normalisation shared by all rendered layers."""
  import matplotlib  # optional heavy dependency, needed only for rendering
  from matplotlib import colors

  lo, hi = float(tau_LT[layers].min()), float(tau_LT[layers].max())
  return matplotlib.colormaps[cmap], colors.Normalize(lo, hi if hi > lo else lo + 1e-6), lo, hi


def render_html(pieces: list[str], tau_LT: np.ndarray, layers: list[int], cmap: str) -> str:
  """One paragraph of running text per layer, each token's background its tau_q; a colour legend on top."""
  from matplotlib import colors  # optional heavy dependency, needed only for rendering

  cm, norm, lo, hi = _scale(tau_LT, layers, cmap)
  stops = ", ".join(f"{colors.to_hex(cm(x))} {100 * x:.0f}%" for x in np.linspace(0, 1, 11))  # the legend's bar
  parts = ["<html><head><meta charset='utf-8'><title>tau_q: inverse query temperature per token</title></head>",
           "<body style='font-family:monospace;line-height:1.9;max-width:60em'>",
           "<h2 style='font-family:sans-serif'>tau_q per token: the inverse query temperature</h2>",
           "<p style='font-family:sans-serif'>tau_q multiplies the token's query, so it scales the token's "
           "attention logits: a higher tau_q means sharper attention, a lower one flatter attention. Hover a "
           "token for its value.</p>",
           "<div class='legend' style='font-family:sans-serif;margin:0.5em 0 1em 0'>"
           f"<div>{html.escape(MEANING)}</div>"
           "<div style='display:flex;align-items:center;gap:0.5em'>"
           f"<div>{lo:.4f}<br><small>flatter</small></div>"
           f"<div style='width:24em;height:1.1em;background:linear-gradient(to right, {stops})'></div>"
           f"<div>{hi:.4f}<br><small>sharper</small></div></div></div>"]
  for layer in layers:
    spans = "".join(f"<span title='tau_q {tau:.4f}' style='background:{colors.to_hex(cm(norm(tau)))}'>"
                    f"{html.escape(piece).replace(chr(10), NEWLINE_MARK + '<br>')}</span>"
                    for piece, tau in zip(pieces, tau_LT[layer]))
    parts.append(f"<h3 style='font-family:sans-serif'>layer {layer}</h3><p style='white-space:pre-wrap'>{spans}</p>")
  return "\n".join(parts + ["</body></html>"])


def figure(pieces: list[str], tau_LT: np.ndarray, layers: list[int], cmap: str, width: int = 90,
           fontsize: float = 9.0):
  """The running text of each layer coloured by tau_q, with a labelled colour bar; returns the figure."""
  import matplotlib  # optional heavy dependency, needed only for rendering

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.patches import Rectangle

  cm, norm, _, _ = _scale(tau_LT, layers, cmap)
  segments = layout_running_text(pieces, width)
  n_lines = max((s.line for s in segments), default=0) + 1
  used = max((s.col + len(s.text) for s in segments), default=1)
  char_in, line_in = MONO_ADVANCE_EM * fontsize / 72, 1.55 * fontsize / 72
  title_in, bar_in, margin_in = 0.3, 0.9, 0.15
  text_w, text_h = used * char_in, n_lines * line_in
  fig_w = max(text_w, 4.5) + 2 * margin_in
  fig_h = len(layers) * (text_h + title_in) + bar_in + margin_in
  fig = plt.figure(figsize=(fig_w, fig_h))
  top = fig_h - margin_in
  for layer in layers:
    top -= title_in
    ax = fig.add_axes([margin_in / fig_w, (top - text_h) / fig_h, text_w / fig_w, text_h / fig_h])
    for seg in segments:
      ax.add_patch(Rectangle((seg.col, seg.line), len(seg.text), 1, facecolor=cm(norm(tau_LT[layer, seg.token])),
                             edgecolor="none"))
      ax.text(seg.col, seg.line + 0.5, seg.text, ha="left", va="center", family="DejaVu Sans Mono",
              fontsize=fontsize)
    ax.set(xlim=(0, used), ylim=(n_lines, 0))
    ax.axis("off")
    ax.set_title(f"layer {layer}: tau_q, inverse query temperature (mean over heads)", fontsize=9, loc="left")
    top -= text_h
  cax = fig.add_axes([margin_in / fig_w, 0.5 / fig_h, min(4.0, fig_w - 2 * margin_in) / fig_w, 0.12 / fig_h])
  fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cm), cax=cax, orientation="horizontal",
               label="tau_q (inverse temperature): low = flatter attention, high = sharper")
  return fig


def render_png(pieces: list[str], tau_LT: np.ndarray, layers: list[int], cmap: str, path: str,
               width: int = 90) -> None:
  """Writes `figure(...)` as a PNG."""
  import matplotlib.pyplot as plt  # optional heavy dependency, needed only for rendering

  fig = figure(pieces, tau_LT, layers, cmap, width)
  fig.savefig(path, dpi=130, bbox_inches="tight", pad_inches=0.1)
  plt.close(fig)


def demo_sample(index: int) -> str:
  """Chapter `index` of the demo corpus's validation split (held out from the demo's training)."""
  chapters = [text for i, text in enumerate(demo.kjv_chapters())
              if demo._split_of(i) == "validation"]  # pylint: disable=protected-access
  if not 0 <= index < len(chapters):
    raise ValueError(f"--demo_sample: expected a chapter index in [0, {len(chapters)}), got {index}")
  return chapters[index]


def main(argv: list[str] | None = None) -> dict:
  """The command line: renders the text and returns what it wrote into temperatures.json."""
  parser = cli_errors.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--hf_dir", default="", help="Hugging Face directory of an SSA model (exported by ssa_jax.formats.hf)")
  parser.add_argument("--checkpoint", default="", help="ssa-jax checkpoint (workdir, root or step dir)")
  parser.add_argument("--tokenizer", default="", help="tokenizer path when the source names none")
  parser.add_argument("--text", default="", help="text to render")
  parser.add_argument("--text_file", default="", help="file holding the text (instead of --text)")
  parser.add_argument("--demo_sample", type=int, nargs="?", const=0, default=None, metavar="N",
                      help="render chapter N (default 0) of the demo corpus's validation split instead of --text")
  parser.add_argument("--layers", default="0,-1", help="comma-separated layer indices (negative from the end), or 'all'")
  parser.add_argument("--max_tokens", type=int, default=512, help="tokens rendered at most")
  parser.add_argument("--width", type=int, default=90, help="characters per line of the PNG's running text")
  parser.add_argument("--out", default="temperatures", help="output directory")
  parser.add_argument("--cmap", default="coolwarm", help="matplotlib colour map (coolwarm: red = high tau_q)")
  args = parser.parse_args(argv)
  given = [name for name in ("text", "text_file") if getattr(args, name)] + (
      ["demo_sample"] if args.demo_sample is not None else [])
  if len(given) != 1:
    parser.error(f"give exactly one of --text, --text_file, --demo_sample (got {given or 'none'})")
  if args.text_file and not epath.Path(args.text_file).is_file():
    parser.error(f"--text_file: {args.text_file} is not a file")
  text = (args.text or (epath.Path(args.text_file).read_text() if args.text_file else "")
          or demo_sample(args.demo_sample))
  model, variables, own_tok = load_model(ModelSource(hf_dir=args.hf_dir, checkpoint=args.checkpoint).validate())
  tok_path = args.tokenizer or own_tok
  if not tok_path:
    parser.error("the model names no tokenizer: pass --tokenizer=PATH")
  tokenizer = load_tokenizer(tok_path)
  check_vocab(tokenizer, model.config.vocab_size)
  ids = tokenizer.encode(text)[: min(args.max_tokens, model.config.max_seq_len)]
  if not ids:
    parser.error("the text encodes to no tokens")
  tau_LT = token_temperatures(model, variables, ids)
  layers = parse_layers(args.layers, model.config.num_layers)
  pieces = decoded_pieces(tokenizer.decode, ids)
  out = epath.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "temperatures.html").write_text(render_html(pieces, tau_LT, layers, args.cmap))
  render_png(pieces, tau_LT, layers, args.cmap, str(out / "temperatures.png"), args.width)
  written = {"meaning": MEANING, "tokens": pieces, "ids": ids,
             "tau_q_mean_over_heads": {str(l): tau_LT[l].tolist() for l in layers}}
  (out / "temperatures.json").write_text(json.dumps(written))
  print(f"wrote {out}/temperatures.html, temperatures.png, temperatures.json ({len(ids)} tokens, layers {layers}); "
        f"colour = {MEANING}")
  return written


if __name__ == "__main__":
  cli_errors.run_argv(main)
