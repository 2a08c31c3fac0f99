"""Small random-weight transformers models (the independent reference) saved to a directory."""

from __future__ import annotations

import torch
import transformers


def make_hf_model(kind: str, out_dir, **overrides):
  """Builds, seeds and saves a tiny GPT-2 / GPT-NeoX / Llama; returns the torch model in eval mode."""
  torch.manual_seed(0)
  if kind == "gpt2":
    cfg = transformers.GPT2Config(**{**dict(vocab_size=101, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0), **overrides})
    model = transformers.GPT2LMHeadModel(cfg)
  elif kind == "neox":
    cfg = transformers.GPTNeoXConfig(**{**dict(vocab_size=112, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                               rotary_pct=0.25, hidden_dropout=0.0, attention_dropout=0.0), **overrides})
    model = transformers.GPTNeoXForCausalLM(cfg)
  elif kind == "llama":
    cfg = transformers.LlamaConfig(**{**dict(vocab_size=103, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                                             max_position_embeddings=64), **overrides})
    model = transformers.LlamaForCausalLM(cfg)
  else:
    raise ValueError(kind)
  # Default init leaves biases and norms at 0/1; randomise every tensor so the mapping is fully exercised.
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.2)
  model.eval()
  model.save_pretrained(out_dir, safe_serialization=True)
  return model


def hf_logits(model, tokens_BT):
  with torch.no_grad():
    return model(torch.as_tensor(tokens_BT, dtype=torch.long)).logits.float().numpy()
