"""eval.py's metrics equal lm-eval's own (its `hf` model, the same documents, local task YAMLs) to 1e-4.

Small random-weight transformers models (GPT-2 with the GPT-2 BPE, Llama with the Llama-2 tokenizer) are
saved with their tokenizers; lm-eval scores them with torch, we score the same directory with JAX.
max_length is 64 / 96 so that long documents are left-truncated and WikiText pages span several windows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval_reference import run_lm_eval, write_task_files, write_yamls
from hf_models import make_hf_model

TASKS = ["piqa", "arc_easy", "arc_challenge", "winogrande", "lambada_openai", "lambada_standard", "hellaswag",
         "wikitext"]
LIMIT = 10
MAX_LENGTH = {"gpt2": 64, "llama": 96}  # Llama tokens are shorter: PIQA answers need more than 64


def _save_tokenizer(family: str, shared, out_dir) -> None:
  from transformers import GPT2TokenizerFast, LlamaTokenizer

  if family == "gpt2":
    tok = GPT2TokenizerFast(tokenizer_file=str(shared / "tokenizers" / "gpt2" / "tokenizer.json"),
                            bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
  else:  # transformers converts the SentencePiece model; Llama-2's config adds BOS
    sp_dir = out_dir.parent / "sp"
    sp_dir.mkdir(exist_ok=True)
    (sp_dir / "tokenizer.model").write_bytes((shared / "tokenizers" / "llama2" / "tokenizer.model").read_bytes())
    tok = LlamaTokenizer.from_pretrained(str(sp_dir), add_bos_token=True)
  tok.save_pretrained(str(out_dir))


def _model(family: str, out_dir):
  if family == "gpt2":
    return make_hf_model("gpt2", out_dir, vocab_size=50257, n_embd=64, n_head=4, n_layer=2, n_positions=128)
  return make_hf_model("llama", out_dir, vocab_size=32000, hidden_size=64, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=128)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def both_runs(request, tmp_path_factory):
  from tests_shared import shared_data_or_skip

  shared = shared_data_or_skip()
  family = request.param
  root = tmp_path_factory.mktemp(f"parity_{family}")
  model_dir = root / "model"
  _model(family, model_dir)
  _save_tokenizer(family, shared, model_dir)
  data_dir = root / "data"
  write_task_files(data_dir, shared, n=12)
  names = write_yamls(root / "yamls", data_dir, TASKS)
  reference = run_lm_eval(model_dir, root / "yamls", names, LIMIT, MAX_LENGTH[family])

  from ssa_jax.evaluate import run_eval
  from ssa_jax.formats.hf import from_hf

  model, params = from_hf(model_dir)
  ours = run_eval(model, params, str(model_dir), TASKS, data_dir=str(data_dir), limit=LIMIT, batch_size=8,
                  max_length=MAX_LENGTH[family], output=str(root / "results.json"), show_progress=False)
  return family, reference, ours


def test_every_metric_matches_lm_eval(both_runs):
  family, reference, ours = both_runs
  compared = 0
  for task in TASKS:
    ref, got = reference["results"][f"ssa_{task}"], ours["results"][task]
    keys = [k for k in ref if k.endswith(",none")]
    assert keys and set(keys) == {k for k in got if k.endswith(",none")}, (task, keys, list(got))
    for key in keys:
      if isinstance(ref[key], str):
        assert got[key] == ref[key], (family, task, key)
      else:
        assert math.isclose(got[key], ref[key], rel_tol=1e-4, abs_tol=1e-12), (family, task, key, got[key], ref[key])
      compared += 1
    assert got["sample_len"] == ref["sample_len"] == ours["n-samples"][task]["effective"]
    assert ours["n-samples"][task] == reference["n-samples"][f"ssa_{task}"]
    assert ours["higher_is_better"][task] == reference["higher_is_better"][f"ssa_{task}"]
  assert compared >= 30


def test_results_layout_follows_lm_eval(both_runs):
  family, reference, ours = both_runs
  for key in ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "config", "date",
              "tokenizer_eos_token", "tokenizer_bos_token", "eot_token_id", "max_length"):
    assert key in ours, key
  assert ours["tokenizer_eos_token"] == reference["tokenizer_eos_token"]
  assert ours["eot_token_id"] == reference["eot_token_id"]
  assert ours["max_length"] == reference["max_length"] == MAX_LENGTH[family]
  assert ours["versions"]["wikitext"] == reference["versions"]["ssa_wikitext"]
  own = ours["ssa_jax"]
  assert own["params"] > 0 and own["tokens_per_s"] > 0 and own["wall_time_s"] > 0
  assert not own["missing_tasks"] and not own["skipped_records"]
  assert np.isfinite(ours["results"]["wikitext"]["word_perplexity,none"])
