"""sample.py and its sampler: the filters against transformers' logits warpers, the draws against the
filtered distribution, reproducibility by seed, and greedy output equal to transformers' generate on a
random-weight GPT-2 with the real GPT-2 tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.generation import logits_process

from hf_models import make_hf_model
from ssa_jax.evaluate.generate import generate
from ssa_jax.evaluate.sampling import Sampler, filtered_logits, pick, prompt_keys
from ssa_jax.formats.hf import from_hf
from tests_shared import shared_data_or_skip

ROOT = Path(__file__).resolve().parents[1]


def _transformers_filtered(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
  """transformers' warpers in generate's order (temperature, top-k, top-p)."""
  scores = torch.tensor(logits)
  warpers = [logits_process.TemperatureLogitsWarper(temperature)]
  if top_k:
    warpers.append(logits_process.TopKLogitsWarper(top_k))
  if top_p < 1.0:
    warpers.append(logits_process.TopPLogitsWarper(top_p))
  for warper in warpers:
    scores = warper(None, scores)
  return scores.numpy()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 0.9), (0.7, 5, 1.0), (1.3, 8, 0.6), (0.5, 1, 0.3),
                                                     (2.0, 0, 0.05)])
def test_filters_equal_transformers_warpers(temperature, top_k, top_p):
  logits_BV = np.random.default_rng(0).normal(0, 2, (6, 50)).astype(np.float32)
  ours = np.asarray(filtered_logits(jnp.asarray(logits_BV), Sampler(temperature, top_k, top_p)))
  ref = _transformers_filtered(logits_BV, temperature, top_k, top_p)
  np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))
  np.testing.assert_allclose(ours[np.isfinite(ours)], ref[np.isfinite(ref)], rtol=1e-6)


def test_draws_follow_the_filtered_distribution():
  """20,000 draws (one key each) from logits over 6 tokens, top-k 4: frequencies within 4 standard errors."""
  logits_V = np.array([2.0, 1.5, 0.5, 0.0, 3.0, -1.0], np.float32)
  sampler, rows = Sampler(temperature=0.8, top_k=4, seed=3), 20_000
  tokens = np.asarray(pick(jnp.broadcast_to(logits_V, (rows, 6)), prompt_keys(3, jnp.arange(rows)), 0, sampler))
  kept = np.argsort(-logits_V)[:4]
  p = np.zeros(6)
  p[kept] = np.exp(logits_V[kept] / 0.8) / np.exp(logits_V[kept] / 0.8).sum()
  freq = np.bincount(tokens, minlength=6) / rows
  np.testing.assert_array_less(np.abs(freq - p), 4 * np.sqrt(p * (1 - p) / rows) + 1e-12)


def test_sampler_rejects_bad_values():
  for kwargs, flag in (({"temperature": -1.0}, "--temperature"), ({"top_k": -2}, "--top_k"),
                       ({"top_p": 0.0}, "--top_p"), ({"top_p": 1.5}, "--top_p")):
    with pytest.raises(ValueError, match=flag):
      Sampler(**kwargs)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
  """A random-weight transformers GPT-2 with the GPT-2 vocabulary and the real GPT-2 tokenizer beside it."""
  tokenizer_dir = shared_data_or_skip("tokenizers", "gpt2")
  d = tmp_path_factory.mktemp("gpt2")
  torch_model = make_hf_model("gpt2", d, vocab_size=50257, n_positions=128)
  (d / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
  return d, torch_model


def test_sampling_reproducible_by_seed_whatever_the_batch(gpt2):
  model, params = from_hf(gpt2[0])
  prompts = [[464, 6766, 318], [7454, 2402, 257], [40]]
  sampler = Sampler(temperature=1.0, top_p=0.9, seed=7)
  together = generate(model, params, prompts, 8, sampler)  # prompts 0 and 1 (3 tokens each) share a batch
  assert generate(model, params, prompts, 8, sampler, max_batch=1) == together
  assert len({tuple(t) for t in together}) == 3
  assert generate(model, params, prompts, 8, Sampler(temperature=1.0, top_p=0.9, seed=8)) != together


def test_sample_py_greedy_equals_transformers_generate(gpt2, tmp_path):
  hf_dir, torch_model = gpt2
  prompts = ["The sky is", "Once upon a time, there was"]
  out = tmp_path / "out.jsonl"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, str(ROOT / "sample.py"), f"--hf_dir={hf_dir}", f"--prompt={prompts[0]}",
         f"--prompt={prompts[1]}", "--max_new_tokens=12", f"--output={out}"]
  run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  assert "tokens/s" in run.stderr
  records = [json.loads(line) for line in out.read_text().splitlines()]
  tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
  for prompt, record in zip(prompts, records):
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
      ref = torch_model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.eos_token_id)[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in ref:
      ref = ref[:ref.index(tok.eos_token_id)]
    assert record["prompt"] == prompt
    assert record["tokens"] == ref
    assert record["text"] == tok.decode(ref)


def test_sample_py_bad_request_is_one_line(gpt2, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, str(ROOT / "sample.py"), f"--hf_dir={gpt2[0]}", "--max_new_tokens=4"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1].startswith("error: no prompt")
