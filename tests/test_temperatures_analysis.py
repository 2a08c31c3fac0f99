"""The Figure 1 rendering (ssa_jax.analysis.temperatures): the right numbers, and files a browser can open."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from ssa_jax.analysis import temperatures
from ssa_jax.model import Decoder, init_params
from tiny_models import tiny_config


def _model(**ssa) -> tuple[Decoder, dict]:
  cfg = tiny_config("neox", **ssa)  # NeoX with biases: what transformers' GPTNeoX holds (the CLI test exports)
  return Decoder(cfg), init_params(cfg, jax.random.PRNGKey(0))


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
  tau_LT = temperatures.token_temperatures(model, params, ids)
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
  tau_LT = temperatures.token_temperatures(model, params, ids)
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
    temperatures.token_temperatures(model, params, [1, 2, 3])


def test_cli_writes_html_png_and_json(tmp_path):
  """The command on an SSA model exported to a Hugging Face directory, with a tokenizer from that directory."""
  import subprocess
  import sys

  from tokenizers import Tokenizer, models, pre_tokenizers

  from ssa_jax.hf import to_hf

  model, params = _model(enabled=True)
  hf_dir = tmp_path / "hf"
  to_hf(model, params, str(hf_dir))
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
