"""`python -m ssa_jax.data.inspect PATH --tokenizer=...`: documents, tokens, bad records, tokens per set, a sample."""

from __future__ import annotations

from absl import app, flags

from ssa_jax.data.corpus_scan import scan
from ssa_jax.data.readers import BAD_KINDS
from ssa_jax.data.tokenizer import load_tokenizer

_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer.json / SentencePiece .model / dir holding one.")
_SPLIT = flags.DEFINE_string("split", "train", "Split to inspect (ignored when PATH is a file).")
_FORMAT = flags.DEFINE_string("format", "auto", "Reader format (auto picks by extension).")
_MAX_DOCS = flags.DEFINE_integer("max_docs", 0, "Stop after this many documents (0 = all).")
_SAMPLE_CHARS = flags.DEFINE_integer("sample_chars", 400, "Characters of the first document to print.")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m ssa_jax.data.inspect PATH --tokenizer=PATH")
  if not _TOKENIZER.value:
    raise app.UsageError("--tokenizer: required (a tokenizer.json, a SentencePiece .model or a dir)")
  tok = load_tokenizer(_TOKENIZER.value)
  r = scan(argv[1], _SPLIT.value, tok, fmt=_FORMAT.value, max_docs=_MAX_DOCS.value)
  print(f"path: {argv[1]}  split: {_SPLIT.value}  files: {r.files}  tokenizer: {tok.path}")
  print(f"documents: {r.documents}")
  print(f"tokens: {r.tokens}  (BOS per tokenizer, one EOS per document)")
  print(f"bad records: {sum(r.bad.values())}  " + "  ".join(f"{k}={r.bad.get(k, 0)}" for k in BAD_KINDS))
  print("tokens per set name:")
  for name, n in r.tokens_per_set.most_common():
    print(f"  {name:24s} {n:>14d} tokens  {r.docs_per_set[name]:>10d} docs  {n / max(r.tokens, 1):7.2%}")
  if r.sample is not None:
    print(f"sample (first document, {_SAMPLE_CHARS.value} chars):\n{r.sample[:_SAMPLE_CHARS.value]}")


if __name__ == "__main__":
  app.run(main)
