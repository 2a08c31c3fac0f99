"""lm-eval's generate_until through the `ssa_jax` adapter equals transformers' greedy generate on the same model.

A random-weight transformers GPT-2 and Llama are imported with from_hf; a character tokenizer (printable ASCII,
one id each) makes every generated id decode to one known character, so texts compare exactly. The reference
is `model.generate(do_sample=False)`, its text cut at the first `until` string by hand; a stop token is
transformers' own `eos_token_id` stop.
"""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from hf_models import make_hf_model
from ssa_jax.evaluate.generate import generate
from ssa_jax.evaluate.lm_eval_adapter import SSAJaxLM
from ssa_jax.formats.hf import from_hf

VOCAB, MAX_LENGTH = 97, 64
PROMPTS = ["The sky is", "Once upon a time, there", "x"]


class CharTokenizer:
  """Printable ASCII (32-126) -> ids 2-96; 0 = EOS unless `eos_id` names another id, which then decodes to ''."""

  path, bos_id, vocab_size, adds_bos_by_default = "chars", 1, VOCAB, False

  def __init__(self, eos_id: int = 0):
    self.eos_id = eos_id

  def encode(self, text, add_bos=None):
    return ([self.bos_id] if add_bos else []) + [ord(c) - 30 for c in text]

  def decode(self, ids):
    return "".join(chr(i + 30) for i in ids if i >= 2 and i != self.eos_id)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def models(request, tmp_path_factory):
  """(torch reference, our model, our params) of one family, the same weights."""
  d = tmp_path_factory.mktemp(request.param)
  if request.param == "gpt2":
    torch_model = make_hf_model("gpt2", d, vocab_size=VOCAB, n_positions=MAX_LENGTH)
    _vary_gpt2(torch_model, d)
  else:
    torch_model = make_hf_model("llama", d, vocab_size=VOCAB, max_position_embeddings=MAX_LENGTH)
  torch_model.generation_config.eos_token_id = None  # no stop unless a test names one
  torch_model.generation_config.bos_token_id = None
  model, params = from_hf(d)
  return torch_model, model, params


def _vary_gpt2(torch_model, out_dir) -> None:
  """Norm gains near 1 and larger embeddings, saved again: with gains around 0 the random GPT-2's greedy text
  alternates two characters, which would make the stop checks below trivial."""
  with torch.no_grad():
    for name, p in torch_model.named_parameters():
      if "ln" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif "wte" in name or "wpe" in name:
        p.mul_(5.0)
  torch_model.save_pretrained(out_dir, safe_serialization=True)


def _first_new(seq, start: int, recurring: bool = False) -> int:
  """The first index >= start whose item has not occurred before (a stop there cuts exactly there); with
  `recurring`, one that also occurs again later (so cutting at the last occurrence instead would differ)."""
  for i in range(start, len(seq)):
    if seq[i] not in seq[:i] and (not recurring or seq[i] in seq[i + 1:]):
      return i
  raise AssertionError(f"no new item after {start} in {seq!r}")


def _hf_greedy(torch_model, ids: list[int], max_new: int, eos_id: int | None = None) -> list[int]:
  """transformers' greedy continuation; with eos_id it stops there (the stop token itself left out)."""
  out = torch_model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False, eos_token_id=eos_id,
                             pad_token_id=0, attention_mask=torch.ones(1, len(ids), dtype=torch.long))
  new = out[0, len(ids):].tolist()
  return new[:new.index(eos_id)] if eos_id is not None and eos_id in new else new


def _ours(model, params, tok, requests: list[tuple[str, dict]]) -> list[str]:
  lm = SSAJaxLM(model=model, variables=params, tokenizer=tok, max_length=MAX_LENGTH, batch_size=4)
  return lm.generate_until([Instance("generate_until", {}, req, i) for i, req in enumerate(requests)],
                           disable_tqdm=True)


def test_generate_until_equals_transformers_greedy(models):
  torch_model, model, params = models
  tok = CharTokenizer()
  got = _ours(model, params, tok, [(p, {"until": ["\n"], "max_gen_toks": 12}) for p in PROMPTS])
  expected = [tok.decode(_hf_greedy(torch_model, tok.encode(p), 12)) for p in PROMPTS]
  assert all(len(e) == 12 for e in expected)  # no id of the reference is dropped by decode: a full comparison
  assert got == expected


def test_until_string_cuts_at_its_first_occurrence(models):
  torch_model, model, params = models
  tok = CharTokenizer()
  full = tok.decode(_hf_greedy(torch_model, tok.encode(PROMPTS[2]), 16))
  at = _first_new(full, 3, recurring=True)  # a stop string first seen at `at` >= 3, and again later
  stop, cut = full[at], full[:at]
  (got,) = _ours(model, params, tok, [(PROMPTS[2], {"until": ["never-seen", stop], "max_gen_toks": 16})])
  assert got == cut


def test_stop_token_ends_generation_as_transformers_eos_does(models):
  torch_model, model, params = models
  free = _hf_greedy(torch_model, CharTokenizer().encode(PROMPTS[0]), 16)
  at = _first_new(free, 2)  # this greedy token becomes the end-of-text token: generation must stop before it
  tok = CharTokenizer(eos_id=free[at])
  reference = _hf_greedy(torch_model, tok.encode(PROMPTS[0]), 16, eos_id=free[at])
  assert len(reference) == at and at >= 2
  # until names nothing that occurs: only the stop token (decoded as '') can end the text early.
  (got,) = _ours(model, params, tok, [(PROMPTS[0], {"until": ["never-seen"], "max_gen_toks": 16})])
  assert got == tok.decode(reference) and len(got) == len(reference)
  # The ids themselves: generate's stop_ids cut before the stop token, as transformers' eos_token_id.
  assert generate(model, params, [tok.encode(PROMPTS[0])], 16, stop_ids=(free[at],)) == [reference]


def test_long_context_keeps_its_last_tokens(models):
  # lm-eval's rule: the context is left-truncated to max_length - max_gen_toks tokens.
  torch_model, model, params = models
  tok = CharTokenizer()
  context = "".join(chr(33 + (7 * i) % 90) for i in range(100))
  (got,) = _ours(model, params, tok, [(context, {"until": ["\n"], "max_gen_toks": 10})])
  assert got == tok.decode(_hf_greedy(torch_model, tok.encode(context)[-(MAX_LENGTH - 10):], 10))
