"""lm-eval model `ssa_jax`: run any lm-evaluation-harness task on our checkpoints with lm-eval itself.

Importing this module registers the model; then
  lm_eval.simple_evaluate(model="ssa_jax", model_args="hf_dir=DIR,batch_size=16", tasks=[...])
  python -c "import ssa_jax.evaluate.lm_eval_adapter as a; a.cli()" --model ssa_jax --model_args checkpoint=W ...

model_args: hf_dir= or checkpoint=, tokenizer= (when the source names none), batch_size, max_length,
add_bos_token (true/false; default: the tokenizer's own), max_gen_toks.
"""

from __future__ import annotations

from typing import Any

import lm_eval.models  # noqa: F401  (fills the registry first: lm-eval only does it when it is empty)
from lm_eval.__main__ import cli_evaluate
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from ssa_jax.data.tokenizer import load_tokenizer
from ssa_jax.evaluate.generate import generate
from ssa_jax.evaluate.loading import ModelSource, load_model
from ssa_jax.evaluate.requests import TokenRequest, prefix_token
from ssa_jax.evaluate.runner import parse_add_bos, rolling_loglikelihoods
from ssa_jax.evaluate.scoring import Scorer
from ssa_jax.formats.tokenizer_files import check_vocab


@register_model("ssa_jax")
class SSAJaxLM(TemplateLM):
  """Our JAX scorer behind lm-eval's LM interface (loglikelihood, rolling, greedy generate_until)."""

  def __init__(self, hf_dir: str = "", checkpoint: str = "", tokenizer: str = "", batch_size: Any = 16,
               max_length: int | None = None, add_bos_token: Any = None, max_gen_toks: int = 256,
               model=None, variables=None, **kwargs):
    super().__init__()
    if model is None:
      model, variables, own = load_model(ModelSource(hf_dir=hf_dir, checkpoint=checkpoint))
      tokenizer = tokenizer or own
    if not tokenizer:
      raise ValueError("ssa_jax: the model names no tokenizer; pass tokenizer=PATH in model_args")
    self.tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    check_vocab(self.tok, model.config.vocab_size)
    self.model, self.variables = model, variables
    self._max_length = int(max_length or model.config.max_seq_len)
    self.add_bos = parse_add_bos(add_bos_token)
    self._max_gen_toks = int(max_gen_toks)
    bs = 16 if str(batch_size).startswith("auto") else int(batch_size)
    self.batch_size_per_gpu = bs
    self.scorer = Scorer(model, variables, self._max_length, bs)

  @property
  def eot_token_id(self) -> int:
    return self.tok.eos_id

  @property
  def prefix_token_id(self) -> int:
    return prefix_token(self.tok)

  @property
  def max_length(self) -> int:
    return self._max_length

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
    """Ids of `string`; add_special_tokens None follows add_bos_token / the tokenizer's default."""
    add = False if add_special_tokens is False else self.add_bos  # None: the tokenizer's own default
    return self.tok.encode(string, add_bos=add)

  def tok_decode(self, tokens) -> str:
    return self.tok.decode(tokens)

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
    reqs = [TokenRequest(tuple(ctx), tuple(cont), i) for i, (_, ctx, cont) in enumerate(requests)]
    for r in reqs:
      if not r.continuation or len(r.continuation) > self._max_length:
        raise ValueError(f"ssa_jax: continuation of {len(r.continuation)} tokens; expected 1..{self._max_length}")
    self.scorer.show_progress = not disable_tqdm
    ll, greedy = self.scorer.score(reqs, desc="ssa_jax loglikelihood")
    return [(float(a), bool(b)) for a, b in zip(ll, greedy)]

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    self.scorer.show_progress = not disable_tqdm
    texts = [req.args[0] for req in requests]
    return rolling_loglikelihoods(self.scorer, self.tok, texts, self._max_length, self.add_bos, "ssa_jax rolling")

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Greedy decoding with the KV cache; the text is cut at the first `until` string."""
    out = []
    for req in tqdm(requests, disable=disable_tqdm, desc="ssa_jax generate_until"):
      context, gen_kwargs = req.args
      gen_kwargs = dict(gen_kwargs or {})
      until = gen_kwargs.get("until") or [self.tok.decode([self.eot_token_id])]
      until = [until] if isinstance(until, str) else list(until)
      max_new = int(gen_kwargs.get("max_gen_toks", self._max_gen_toks))
      ids = self.tok_encode(context)[-max(self._max_length - max_new, 1):]  # room for max_new new tokens
      (new,) = generate(self.model, self.variables, [ids], max_new, stop_ids=(self.eot_token_id,))
      text = self.tok.decode(new)
      for stop in filter(None, until):
        text = text.split(stop)[0]
      out.append(text)
    return out


def cli() -> None:
  """lm-eval's command line with the `ssa_jax` model registered."""
  cli_evaluate()
