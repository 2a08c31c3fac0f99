"""Tokenizers from a path encode exactly as transformers does (GPT-2, Pythia, Llama-2), BOS/EOS per model."""

import json

import pytest

from ssa_jax.data.demo import train_bpe
from ssa_jax.data.tokenizer import load_tokenizer
from tests_shared import shared_data_or_skip

SAMPLES = [
    "In the beginning God created the heaven and the earth.",
    "Hello world!\n\nTwo  spaces,\ttabs, café, naïve, 你好, emoji 😀 and numbers 1234567.",
    " leading space and trailing space ",
    "def f(x):\n    return x ** 2  # code\n",
]


def _need(rel):
  return shared_data_or_skip("tokenizers", rel)


@pytest.mark.parametrize("rel,eos,adds_bos,vocab", [
    ("gpt2/tokenizer.json", 50256, False, 50257),
    ("pythia/tokenizer.json", 0, False, 50277),
])
def test_hf_tokenizer_json_matches_transformers(rel, eos, adds_bos, vocab):
  transformers = pytest.importorskip("transformers")
  path = _need(rel)
  ours = load_tokenizer(str(path))
  ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
  assert (ours.eos_id, ours.adds_bos_by_default, ours.vocab_size) == (eos, adds_bos, vocab)
  assert ours.vocab_size == len(ref)
  for text in SAMPLES:
    assert ours.encode(text) == ref(text)["input_ids"], text
    assert ours.decode(ours.encode(text)) == text
  assert ours.encode_batch(SAMPLES) == [ref(t)["input_ids"] for t in SAMPLES]
  assert ours.encode(SAMPLES[0], add_bos=True) == [ours.bos_id] + ours.encode(SAMPLES[0])


def test_gpt2_directory_matches_autotokenizer():
  transformers = pytest.importorskip("transformers")
  path = _need("gpt2/tokenizer.json").parent
  ours = load_tokenizer(str(path))
  ref = transformers.AutoTokenizer.from_pretrained(str(path))
  assert ours.eos_id == ref.eos_token_id and ours.bos_id == ref.bos_token_id
  assert [ours.encode(t) for t in SAMPLES] == [ref(t)["input_ids"] for t in SAMPLES]


def test_llama_sentencepiece_matches_transformers_sentencepiece_backend():
  # transformers 5's LlamaTokenizer(vocab_file=...) ignores the file (it is a tokenizers-backed class),
  # and LlamaTokenizer.from_pretrained(dir) converts the model to BPE, which splits runs of spaces
  # differently from SentencePiece; its SentencePiece backend runs the .model itself (legacy Llama-2).
  pytest.importorskip("transformers")
  from transformers.tokenization_utils_sentencepiece import SentencePieceBackend
  path = _need("llama2/tokenizer.model")
  ours = load_tokenizer(str(path))
  ref = SentencePieceBackend(vocab_file=str(path), bos_token="<s>", eos_token="</s>", unk_token="<unk>")
  assert (ours.bos_id, ours.eos_id, ours.vocab_size, ours.adds_bos_by_default) == (1, 2, 32000, True)
  assert (ref.bos_token_id, ref.eos_token_id) == (1, 2)
  for text in SAMPLES:
    expected = ref(text, add_special_tokens=False)["input_ids"]
    assert ours.encode(text, add_bos=False) == expected, text
    assert ours.encode(text) == [1] + expected  # Llama adds BOS by default
    assert ours.decode(ours.encode(text)) == text  # (its decode prints byte-fallback pieces raw)
  assert ours.encode_batch(SAMPLES[:2]) == [ours.encode(t) for t in SAMPLES[:2]]


def test_tokenizer_json_eos_from_names_and_bad_paths(tmp_path):
  (tmp_path / "tokenizer.json").write_text(train_bpe(["some text to learn from"] * 3, 300))
  tok = load_tokenizer(str(tmp_path))
  assert tok.eos_id == 0 and tok.bos_id == 0 and not tok.adds_bos_by_default and tok.vocab_size <= 300
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_tokenizer(str(tmp_path / "missing.json"))
  (tmp_path / "bad.json").write_text(json.dumps({"not": "a tokenizer"}))
  with pytest.raises(ValueError, match="not a valid HF tokenizer.json"):
    load_tokenizer(str(tmp_path / "bad.json"))
