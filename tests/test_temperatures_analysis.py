"""The Figure 1 rendering (ssa_jax.analysis.temperatures): the right numbers, and files a browser can open."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from ssa_jax.analysis import temperatures
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.params import init_variables
from ssa_jax.runtime import cli_errors
from tiny_models import tiny_config


def _model(**ssa) -> tuple[Decoder, dict]:
  cfg = tiny_config("neox", **ssa)  # NeoX with biases: what transformers' GPTNeoX holds (the CLI test exports)
  return Decoder(cfg), init_variables(cfg, jax.random.PRNGKey(0))["params"]


def test_position_only_temperatures_equal_the_formula():
  """tau_q with the position term alone is 1 + sigmoid(alpha_h) log(n): averaged over heads, per layer."""
  model, params = _model(enabled=True, query=True, value=False, token=False, position=True)
  rng = np.random.default_rng(0)
  alphas = {}
  for layer in range(2):
    alpha_H = rng.normal(size=4).astype(np.float32)
    params[f"layers_{layer}"]["attn"]["ssa_q"]["alpha"] = alpha_H
    alphas[layer] = alpha_H
  ids = list(range(3, 20))
  tau_LT = temperatures.token_temperatures(model, {"params": params}, ids)
  n_T = np.arange(1, len(ids) + 1, dtype=np.float64)
  for layer, alpha_H in alphas.items():
    sig_H = 1.0 / (1.0 + np.exp(-alpha_H.astype(np.float64)))
    expected_T = np.mean(1.0 + sig_H[None, :] * np.log(n_T)[:, None], axis=1)
    np.testing.assert_allclose(tau_LT[layer], expected_T, rtol=1e-5)


def test_token_temperatures_vary_by_token_and_render(tmp_path):
  model, params = _model(enabled=True, query=True, value=True, token=True, position=True)
  # Non-zero second layer of f, so that tau_tok depends on the token (it starts at 0).
  w2 = params["layers_0"]["attn"]["ssa_q"]["w2"]
  w2["kernel"] = np.asarray(jax.random.normal(jax.random.PRNGKey(1), w2["kernel"].shape))
  ids = [5, 9, 5, 9, 17, 40]
  tau_LT = temperatures.token_temperatures(model, {"params": params}, ids)
  assert tau_LT.shape == (2, len(ids))
  assert np.ptp(tau_LT[0]) > 1e-3
  pieces = ["a", "<b>", "c\n", "d", "e", "f"]
  layers = temperatures.parse_layers("0,-1", 2)
  assert layers == [0, 1]
  page = temperatures.render_html(pieces, tau_LT, layers, "coolwarm")
  assert page.count("<span") == 2 * len(ids) and "&lt;b&gt;" in page and f"{tau_LT[0, 4]:.4f}" in page
  png = tmp_path / "t.png"
  temperatures.render_png(pieces, tau_LT, layers, "coolwarm", str(png))
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_layers_and_vanilla_models_are_refused():
  with pytest.raises(ValueError, match="--layers: 5"):
    temperatures.parse_layers("0,5", 2)
  model, params = _model(enabled=False)
  with pytest.raises(ValueError, match="no query temperatures"):
    temperatures.token_temperatures(model, {"params": params}, [1, 2, 3])


def test_cli_writes_html_png_and_json(tmp_path):
  """The command on an SSA model exported to a Hugging Face directory, with a tokenizer from that directory."""
  import subprocess
  import sys

  from tokenizers import Tokenizer, models, pre_tokenizers

  from ssa_jax.formats.hf import to_hf

  model, params = _model(enabled=True)
  hf_dir = tmp_path / "hf"
  to_hf(model, {"params": params}, str(hf_dir))
  vocab = {w: i for i, w in enumerate(["<eos>", "<unk>"] + [f"w{i}" for i in range(62)])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(hf_dir / "tokenizer.json"))
  (hf_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, "-m", "ssa_jax.analysis.temperatures", f"--hf_dir={hf_dir}",
                         "--text=w1 w2 w3 w1 w2 w40", "--layers=all", f"--out={out}"],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  written = json.loads((out / "temperatures.json").read_text())
  assert written["ids"] == [3, 4, 5, 3, 4, 42]
  assert set(written["tau_q_mean_over_heads"]) == {"0", "1"}
  assert (out / "temperatures.png").stat().st_size > 0 and "<span" in (out / "temperatures.html").read_text()
  # The README's example: a held-out demo chapter instead of a text file.
  written = temperatures.main([f"--hf_dir={hf_dir}", "--demo_sample", "--max_tokens=20", f"--out={tmp_path / 'demo'}"])
  assert len(written["ids"]) == 20 and "inverse" in written["meaning"]


def _byte_bpe(tmp_path, vocab_size=300):
  """A byte-level BPE trained on ASCII chapters only: accented letters stay split over two byte tokens."""
  from ssa_jax.data import demo
  from ssa_jax.data.tokenizer import load_tokenizer

  (tmp_path / "tokenizer.json").write_text(demo.train_bpe(demo.kjv_chapters()[:3], vocab_size))
  return load_tokenizer(str(tmp_path / "tokenizer.json"))


def test_pieces_join_as_the_tokenizer_decodes_them(tmp_path):
  """Multi-byte characters stay whole and SentencePiece-style leading spaces are kept (one-by-one decoding loses both)."""
  tok = _byte_bpe(tmp_path)
  ids = tok.encode("the café of naïve men")
  assert any("\ufffd" in tok.decode([i]) for i in ids)  # what decoding token by token showed
  pieces = temperatures.decoded_pieces(tok.decode, ids)
  assert len(pieces) == len(ids) and "".join(pieces) == "the café of naïve men"
  assert not any("\ufffd" in p for p in pieces)
  assert any("é" in p for p in pieces) and any("ï" in p for p in pieces)

  # A SentencePiece-like decoder: '▁' is a space, and the text's leading space is dropped.
  vocab = ["▁In", "▁the", "▁begin", "ning", "."]
  decode = lambda ids: "".join(vocab[i] for i in ids).replace("▁", " ").lstrip(" ")
  assert [decode([i]) for i in range(5)] == ["In", "the", "begin", "ning", "."]
  assert temperatures.decoded_pieces(decode, [0, 1, 2, 3, 4]) == ["In", " the", " begin", "ning", "."]


def test_tokens_are_laid_out_as_running_text_wrapped_at_words():
  pieces = ["In", " the", " begin", "ning", " God", ".\n\n", "And", " the", " earth", " was", " without", " form"]
  segments = temperatures.layout_running_text(pieces, width=12)
  lines: dict[int, str] = {}
  for seg in segments:
    row = lines.get(seg.line, "")
    assert seg.col == len(row), seg  # each piece starts where the previous one ended: no fixed grid
    lines[seg.line] = row + seg.text
  assert [lines[i] for i in sorted(lines)] == ["In the ", "beginning ", "God.↵", "↵", "And the ", "earth was ",
                                               "without form"]
  assert max(len(line) for line in lines.values()) <= 12
  assert {seg.token for seg in segments if "ning" in seg.text} == {3}
  with pytest.raises(ValueError, match="width"):
    temperatures.layout_running_text(pieces, width=0)


def test_figures_say_tau_q_is_the_inverse_temperature_with_a_legend(tmp_path):
  """Both renderings name tau_q as the inverse temperature (higher = sharper); the HTML gets a colour bar."""
  from tiny_models import with_random_temperatures

  model, params = _model(enabled=True)
  params = with_random_temperatures(params, seed=3)
  ids = list(range(3, 40))
  tau_LT = temperatures.token_temperatures(model, {"params": params}, ids)
  pieces = [f" w{i}" for i in ids]
  page = temperatures.render_html(pieces, tau_LT, [0, 1], "coolwarm")
  assert "inverse" in page and "sharper" in page
  legend = page[page.index("class='legend'"):]
  assert "linear-gradient" in legend and f"{tau_LT.min():.4f}" in legend and f"{tau_LT.max():.4f}" in legend
  fig = temperatures.figure(pieces, tau_LT, [0, 1], "coolwarm", width=30)
  text_axes = [ax for ax in fig.axes if ax.get_title(loc="left")]
  assert len(text_axes) == 2 and all("inverse" in ax.get_title(loc="left") for ax in text_axes)
  colorbar_axis = [ax for ax in fig.axes if not ax.get_title(loc="left")][0]
  assert "inverse" in colorbar_axis.get_xlabel() and "sharper" in colorbar_axis.get_xlabel()
  shown = "".join(t.get_text() for t in text_axes[0].texts)
  assert shown.replace(" ", "") == "".join(pieces).replace(" ", "")  # the whole text, in order, wrapped


def test_demo_sample_is_a_held_out_chapter_and_sources_are_exclusive(tmp_path):
  text = temperatures.demo_sample(0)
  assert text.startswith("Genesis 8\n")  # chapter 7 of the Bible (0-based), the first validation chapter
  with pytest.raises(ValueError, match="--demo_sample"):
    temperatures.demo_sample(10_000)
  with pytest.raises(cli_errors.UsageError, match="give exactly one of --text, --text_file, --demo_sample"):
    temperatures.main(["--hf_dir=x", "--text=a", "--demo_sample"])
