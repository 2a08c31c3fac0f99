"""Figure 2 analysis (ssa_jax.analysis.norms): attention rows, ||W^T x||, spikiness, and the CLI on tiny checkpoints."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer

from ssa_jax.analysis import norms
from ssa_jax.data.config import data_config
from ssa_jax.formats.checkpoint import save_model
from ssa_jax.model.config import ModelConfig, SSAConfig
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.params import init_variables

NEOX = dict(family="neox", vocab_size=64, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_seq_len=32,
            rotary_pct=0.5, parallel_residual=True, qkv_bias=True, out_bias=True, mlp_bias=True, activation="gelu")
LLAMA_GQA = dict(family="llama", vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
                 max_seq_len=32, activation="silu")


def make(fields, ssa=SSAConfig(), seed=0, qk_gain=1.0):
  """A random-init model; W_q and W_k multiplied by `qk_gain` so that attention logits are of order one."""
  cfg = ModelConfig(**fields, ssa=ssa).validate()
  params = init_variables(cfg, jax.random.PRNGKey(seed))["params"]
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x * qk_gain if any(getattr(k, "key", None) in ("q", "k") for k in p) and p[-1].key == "kernel"
      else x, params)
  return Decoder(norms.analysis_config(cfg)), params


def tokens(T=16, B=2, seed=1, vocab=64):
  return np.asarray(jax.random.randint(jax.random.PRNGKey(seed), (B, T), 0, vocab), np.int32)


def reference_rows(cfg, x_BTd, attn_params, tau_q_BTH):
  """Explicit numpy attention rows: projections with bias, tau_q, RoPE as (cos, sin) pairs, loop over heads."""
  x = np.asarray(x_BTd, np.float64)
  B, T, _ = x.shape
  H, K, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  q = np.einsum("btd,dhe->bthe", x, np.asarray(attn_params["q"]["kernel"], np.float64))
  k = np.einsum("btd,dke->btke", x, np.asarray(attn_params["k"]["kernel"], np.float64))
  if "bias" in attn_params["q"]:
    q = q + np.asarray(attn_params["q"]["bias"])
    k = k + np.asarray(attn_params["k"]["bias"])
  q = q * np.asarray(tau_q_BTH, np.float64)[..., None]
  rot = cfg.rotary_dim
  half = rot // 2
  pos = np.arange(T, dtype=np.float64)
  freq = cfg.rope_theta ** (-np.arange(half) * 2.0 / rot)
  ang = pos[:, None] * freq[None]  # (T, half)

  def rope(a):
    a = a.copy()
    lo, hi = a[..., :half].copy(), a[..., half:rot].copy()
    c, s = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    a[..., :half] = lo * c - hi * s
    a[..., half:rot] = hi * c + lo * s
    return a

  q, k = rope(q), rope(k)
  rows = np.zeros((B, H, T, T))
  for b in range(B):
    for h in range(H):
      kv = h // (H // K)
      for t in range(T):
        logits = np.array([q[b, t, h] @ k[b, s, kv] / math.sqrt(D) for s in range(t + 1)])
        e = np.exp(logits - logits.max())
        rows[b, h, t, : t + 1] = e / e.sum()
  return rows


@pytest.mark.parametrize("fields", [NEOX, LLAMA_GQA], ids=["neox", "llama_gqa"])
def test_attention_rows_match_explicit_softmax_and_the_layer_output(fields):
  model, params = make(fields, ssa=SSAConfig(enabled=True, token=False, query=True, value=True), qk_gain=8.0)
  # Known, distinct position coefficients per head, so tau_q / tau_v must be applied to the right heads.
  for i in range(model.config.num_layers):
    params[f"layers_{i}"]["attn"]["ssa_q"]["alpha"] = jnp.array([-2.0, -1.0, 0.0, 2.0]) * (i + 1)
    params[f"layers_{i}"]["attn"]["ssa_v"]["alpha"] = jnp.linspace(-1.5, 1.5, model.config.num_kv_heads)
  toks = tokens()
  B, T = toks.shape
  layers = norms.capture_layers(model, {"params": params}, jnp.asarray(toks))
  positions = jnp.broadcast_to(jnp.arange(T), (B, T))
  for i, layer in enumerate(layers):
    attn_p = params[f"layers_{i}"]["attn"]
    rows = np.asarray(norms.attention_rows(model.config, layer, positions))
    np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(rows, k=1) == 0.0)  # causal: nothing above the diagonal
    ref = reference_rows(model.config, layer["x_BTd"], attn_p, layer["tau_q_BTH"])
    np.testing.assert_allclose(rows, ref, atol=2e-5)
    # The rows, through tau_v-scaled values and the output projection, give the layer's real output.
    rebuilt = norms.attention_output(model.config, attn_p, layer, jnp.asarray(rows))
    np.testing.assert_allclose(np.asarray(rebuilt), np.asarray(layer["attn_out_BTd"]), atol=2e-5)
  assert not np.allclose(np.asarray(layers[0]["tau_q_BTH"][0, -1]), 1.0)  # the sown temperatures were read


def test_spec_is_the_norm_of_the_combined_matrix_times_x():
  model, params = make(LLAMA_GQA)
  cfg = model.config
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (2, 5, cfg.d_model)))
  attn_p = params["layers_1"]["attn"]
  spec = np.asarray(norms.spec_norms(cfg, attn_p, jnp.asarray(x)))
  wq, wk = np.asarray(attn_p["q"]["kernel"], np.float64), np.asarray(attn_p["k"]["kernel"], np.float64)
  for h in range(cfg.num_heads):
    W = wq[:, h, :] @ wk[:, h // 2, :].T  # d x d
    np.testing.assert_allclose(spec[..., h], np.linalg.norm(x @ W, axis=-1), rtol=1e-5)  # ||W^T x|| = ||x^T W||
    np.testing.assert_allclose(norms.weight_opnorms(cfg, attn_p)[h], np.linalg.norm(W, 2), rtol=1e-6)


def test_spikiness_bounds():
  T = 4
  uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
  onehot = np.eye(T)
  s = np.asarray(norms.spikiness(jnp.asarray(np.stack([uniform, onehot])[:, None])))
  np.testing.assert_allclose(s[0, 0], 1.0, rtol=1e-6)  # uniform over the L visible keys
  np.testing.assert_allclose(s[1, 0], 1.0 / np.arange(1, T + 1), rtol=1e-6)  # one-hot: 1/L


def test_query_temperature_scales_effective_norm_and_spikes_attention():
  vanilla, params_v = make(NEOX, qk_gain=6.0)
  ssa_cfg = SSAConfig(enabled=True, token=False, position_kind="constant", query=True, value=False)
  ssa, _ = make(NEOX, ssa=ssa_cfg)
  params_s = dict(params_v)
  for i in range(NEOX["num_layers"]):  # the same weights, plus a query temperature of 4 everywhere
    layer = dict(params_v[f"layers_{i}"])
    layer["attn"] = {**layer["attn"], "ssa_q": {"log_tau": jnp.full((NEOX["num_heads"],), np.log(4.0))}}
    params_s[f"layers_{i}"] = layer
  toks = tokens(T=32, B=2)
  a_v = norms.analyse(vanilla, {"params": params_v}, toks.reshape(-1).tolist(), window=32)
  a_s = norms.analyse(ssa, {"params": params_s}, toks.reshape(-1).tolist(), window=32)
  np.testing.assert_allclose(a_v["spec_eff"], a_v["spec_raw"])  # vanilla: tau = 1
  np.testing.assert_allclose(a_s["tau_q"], 4.0)
  np.testing.assert_allclose(a_s["spec_eff"], 4.0 * a_s["spec_raw"], rtol=1e-6)
  np.testing.assert_allclose(a_s["spec_raw"][:, 0], a_v["spec_raw"][:, 0], rtol=1e-5)  # layer 0 sees the same x
  np.testing.assert_allclose(a_s["opnorm"], a_v["opnorm"])
  assert a_v["spikiness"].shape == (64, 2, 4)
  assert a_s["spikiness"].mean() < a_v["spikiness"].mean() - 0.05  # colder softmax: spikier rows


def test_mlp_token_temperature_is_read_from_the_forward():
  ssa_cfg = SSAConfig(enabled=True, token_kind="mlp", query=True, value=True)
  model, params = make(NEOX, ssa=ssa_cfg)
  params["layers_0"]["attn"]["ssa_q"]["w2"]["bias"] = jnp.full((4,), 20.0)  # tanh -> 1: tau_tok = 1
  params["layers_0"]["attn"]["ssa_q"]["alpha"] = jnp.full((4,), 30.0)  # sigmoid -> 1: tau_pos = 1 + log n
  a = norms.analyse(model, {"params": params}, tokens(T=8, B=1).reshape(-1).tolist(), window=8)
  expected = 2.0 + np.log(np.arange(1, 9))
  np.testing.assert_allclose(a["tau_q"][:, 0, :], np.repeat(expected[:, None], 4, 1), rtol=1e-5)


def _tiny_tokenizer(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers

  text = "In the beginning God created the heaven and the earth. " * 20
  tok = Tokenizer(models.BPE(unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=60, special_tokens=["<|endoftext|>", "[UNK]"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:0]))
  path = tmp_path / "tokenizer.json"
  tok.save(str(path))
  (tmp_path / "text.txt").write_text(text)
  return str(path), str(tmp_path / "text.txt")


def test_cli_writes_json_and_png(tmp_path, capsys):
  tok_path, text_path = _tiny_tokenizer(tmp_path)
  vanilla, params_v = make(NEOX, qk_gain=4.0)
  ssa, params_s = make(NEOX, ssa=SSAConfig(enabled=True, token=False, position_kind="constant", query=True, value=False), qk_gain=4.0)
  for i in range(2):
    params_s[f"layers_{i}"]["attn"]["ssa_q"]["log_tau"] = jnp.full((4,), np.log(3.0))
  save_model(tmp_path / "v", vanilla.config, {"params": params_v, "buffers": {}}, run_config={"train": {"seq_len": 16}})
  save_model(tmp_path / "s", ssa.config, {"params": params_s, "buffers": {}}, run_config={"train": {"seq_len": 16}})
  # A method whose rows are no softmax rows (a forget gate decays them): norms, but no spikiness.
  fox, params_f = make({**NEOX, "attention_kind": "forgetting"}, qk_gain=4.0)
  save_model(tmp_path / "f", fox.config, {"params": params_f, "buffers": {}}, run_config={"train": {"seq_len": 16}})
  norms.main([str(tmp_path / "v"), str(tmp_path / "s"), str(tmp_path / "f"), "--labels=vanilla,ssa,fox",
              f"--text_file={text_path}", f"--tokenizer={tok_path}", "--tokens=40", f"--output_dir={tmp_path / 'out'}"])
  results = json.loads((tmp_path / "out" / "norms.json").read_text())
  assert (tmp_path / "out" / "norms.png").stat().st_size > 1000
  assert [r["label"] for r in results] == ["vanilla", "ssa", "fox"]
  fox_s = results[2]["summary"]
  assert fox_s["spikiness"]["mean"] is None and fox_s["spikiness"]["per_token"] == []
  assert len(fox_s["spec_raw"]["per_token"]) == 40 and results[0]["summary"]["spikiness"]["mean"] > 0
  assert results[0]["window"] == 16 and len(results[0]["summary"]["spec_raw"]["per_token"]) == 40
  ssa_s = results[1]["summary"]
  assert ssa_s["spec_eff"]["mean"] == pytest.approx(3.0 * ssa_s["spec_raw"]["mean"], rel=1e-5)
  assert results[0]["ratios_vs_first"]["spec_raw"] == pytest.approx(1.0)
  assert "vanilla" in capsys.readouterr().out


def test_default_text_is_the_runs_own_validation_split_and_is_named(tmp_path, capsys):
  """Without --text_file the analysis reads the run's validation split (not the demo corpus) and says so."""
  tok_path, _ = _tiny_tokenizer(tmp_path)
  corpus = tmp_path / "corpus"
  valid_text = "the earth and the heaven God created in the beginning the earth"
  for split, text in (("train", "In the beginning God created the heaven. " * 4), ("validation", valid_text)):
    (corpus / split).mkdir(parents=True)
    (corpus / split / "part.txt").write_text(text)
  data = data_config().to_dict()  # as a training run saves it
  data.update(path=str(corpus), format="text", tokenizer_path=tok_path, num_streams=1)
  run_config = {"data": data, "train": {"seq_len": 8, "global_batch_size": 1}}
  model, params = make(NEOX)
  save_model(tmp_path / "v", model.config, {"params": params, "buffers": {}}, run_config=run_config)
  expected = Tokenizer.from_file(tok_path).encode(valid_text).ids[:8]  # the tokenizer alone, not the pipeline
  results = norms.main([str(tmp_path / "v"), "--tokens=8", f"--output_dir={tmp_path / 'out'}"])
  out = capsys.readouterr().out
  assert f"v: 8 tokens of the 'validation' split of {corpus} (the run's own)" in out
  assert results[0]["text"] == f"the 'validation' split of {corpus} (the run's own)"
  reference = norms.analyse(model, {"params": params}, expected, window=8)
  np.testing.assert_allclose(results[0]["summary"]["spec_raw"]["per_token"], reference["spec_raw"].mean(axis=(1, 2)),
                             rtol=1e-5)
