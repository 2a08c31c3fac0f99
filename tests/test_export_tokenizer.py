"""An exported tokenizer loads in `transformers.AutoTokenizer` exactly as the run's: the GPT-2 tokenizer beside a
GPT-NeoX (Pythia-family) or Llama config, against transformers' own GPT-2 tokenizer read from the original
directory (its model_type says gpt2)."""

from __future__ import annotations

import json

import pytest
import transformers

from ssa_jax.formats.tokenizer_files import copy_tokenizer
from tests_shared import shared_data_or_skip

TEXTS = ["And God said, Let there be light: and there was light.", "  two  spaces\tand a tab<|endoftext|>", "ünïcødé 123"]


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_exported_gpt2_tokenizer_loads_as_itself_beside_another_family(family, tmp_path):
  gpt2_dir = shared_data_or_skip("tokenizers", "gpt2")
  reference = transformers.AutoTokenizer.from_pretrained(gpt2_dir)
  config = {"gpt_neox": transformers.GPTNeoXConfig, "llama": transformers.LlamaConfig}[family](vocab_size=50304)
  config.save_pretrained(tmp_path)
  written = copy_tokenizer(gpt2_dir, tmp_path)
  assert written == ["tokenizer.json", "tokenizer_config.json"]
  loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
  assert len(loaded) == len(reference) == 50257
  assert (loaded.eos_token, loaded.eos_token_id) == (reference.eos_token, reference.eos_token_id)
  for text in TEXTS:
    assert loaded(text)["input_ids"] == reference(text)["input_ids"]


def test_a_tokenizer_config_of_its_own_is_copied_not_replaced(tmp_path):
  gpt2_dir = shared_data_or_skip("tokenizers", "gpt2")
  source = tmp_path / "source"
  source.mkdir()
  (source / "tokenizer.json").write_bytes((gpt2_dir / "tokenizer.json").read_bytes())
  own = {"tokenizer_class": "GPT2TokenizerFast", "model_max_length": 1024}
  (source / "tokenizer_config.json").write_text(json.dumps(own))
  copy_tokenizer(source, tmp_path / "out")
  assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text()) == own
