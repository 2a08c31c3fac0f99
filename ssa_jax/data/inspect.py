"""`python -m ssa_jax.data.inspect [PATH] [--tokenizer=T] [--config=C]`: documents, tokens, bad records, files
without a usable document, tokens per set, a sample.

The tokenizer is --tokenizer, else the one a --config's run would train with (config.data.tokenizer_path, or
the demo BPE for a demo config), else the tokenizer.json / tokenizer.model in PATH (beside PATH when it is a
file); when none of these names one, one line says so. With --config, PATH, --split and --format default to
the config's data section (config.data.path, train_split, format), so the command reports what that run reads.
A usable document is what the training pipeline trains on (a record that is not bad, before
config.data.mixture / exclude); a file without one is what training skips with a warning.
"""

from __future__ import annotations

from absl import flags
from etils import epath
from ml_collections import config_flags

from ssa_jax.data import demo
from ssa_jax.data.corpus_scan import ScanResult, scan
from ssa_jax.data.readers import BAD_KINDS
from ssa_jax.data.tokenizer import TOKENIZER_FILES, load_tokenizer, tokenizer_in
from ssa_jax.runtime import cli_errors

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (absl), defined only when it runs (other entry points define --tokenizer too)."""
  flags.DEFINE_string("tokenizer", None, "tokenizer.json / SentencePiece .model / dir holding one (default: "
                      "the --config's, else the one in PATH).")
  config_flags.DEFINE_config_file("config", None, help_string="A run config (configs/*.py): its data section is "
                                  "inspected (--config.data.* overrides apply).")
  flags.DEFINE_string("split", None, "Split to inspect (default: config.data.train_split or 'train'; ignored when "
                      "PATH is a file).")
  flags.DEFINE_string("format", None, "Reader format (default: config.data.format or 'auto', by extension).")
  flags.DEFINE_integer("max_docs", 0, "Stop after this many documents (0 = all).")
  flags.DEFINE_integer("sample_chars", 400, "Characters of the first document to print.")


def resolve_tokenizer(path: str, given: str | None, data_cfg=None) -> tuple[str, str]:
  """(tokenizer path, where it came from) for the corpus `path`; raises UsageError saying why there is none."""
  if not epath.Path(path).exists():
    raise FileNotFoundError(f"{path}: does not exist (expected a corpus directory or file)")
  if given:
    return given, "--tokenizer"
  if data_cfg is not None:
    if data_cfg.tokenizer_path:
      return str(data_cfg.tokenizer_path), "config.data.tokenizer_path"
    if data_cfg.get("demo") or not data_cfg.path:
      return demo.ensure_demo_tokenizer(data_cfg.cache_dir, data_cfg.demo_vocab_size), "the demo BPE of the config"
  where = epath.Path(path)
  folder = where if where.is_dir() else where.parent
  found = tokenizer_in(folder)
  if found:
    return found, f"the tokenizer in {folder}"
  config_part = ", the --config names none (config.data.tokenizer_path)" if data_cfg is not None else ""
  config_hint = "" if data_cfg is not None else " or --config=CONFIG (to use its config.data.tokenizer_path)"
  raise cli_errors.UsageError(f"--tokenizer: required: {folder} holds no {' or '.join(TOKENIZER_FILES)}"
                              f"{config_part}; pass --tokenizer=FILE_OR_DIR{config_hint}")


def report(path: str, split: str, r: ScanResult, tokenizer_path: str, how: str, sample_chars: int) -> str:
  """The console report of one scan."""
  lines = [f"path: {path}  split: {split}  files: {r.files}  tokenizer: {tokenizer_path} ({how})",
           f"documents: {r.documents}",
           f"tokens: {r.tokens}  (BOS per tokenizer, one EOS per document)",
           f"bad records: {sum(r.bad.values())}  " + "  ".join(f"{k}={r.bad.get(k, 0)}" for k in BAD_KINDS),
           f"files without a usable document (training skips them, one warning each): "
           f"{len(r.files_without_documents)}"]
  lines += [f"  {f}" for f in r.files_without_documents]
  lines.append("tokens per set name:")
  for name, n in r.tokens_per_set.most_common():
    lines.append(f"  {name:24s} {n:>14d} tokens  {r.docs_per_set[name]:>10d} docs  {n / max(r.tokens, 1):7.2%}")
  if r.sample is not None:
    lines.append(f"sample (first document, {sample_chars} chars):\n{r.sample[:sample_chars]}")
  return "\n".join(lines)


def main(argv):
  """The command line (absl flags; see the module docstring)."""
  data_cfg = FLAGS.config.data if FLAGS.config is not None else None
  if len(argv) > 2 or (len(argv) == 1 and data_cfg is None):
    raise cli_errors.UsageError("usage: python -m ssa_jax.data.inspect PATH [--tokenizer=PATH] [--config=CONFIG] "
                                "(PATH defaults to the --config's config.data.path)")
  path = argv[1] if len(argv) == 2 else (data_cfg.path or demo.ensure_demo_corpus(data_cfg.cache_dir))
  split = FLAGS.split or (data_cfg.train_split if data_cfg is not None else "train")
  fmt = FLAGS.format or (data_cfg.format if data_cfg is not None else "auto")
  tok_path, how = resolve_tokenizer(path, FLAGS.tokenizer, data_cfg)
  tok = load_tokenizer(tok_path)
  r = scan(path, split, tok, fmt=fmt, max_docs=FLAGS.max_docs)
  print(report(path, split, r, tok.path, how, FLAGS.sample_chars))


if __name__ == "__main__":
  define_flags()
  cli_errors.run(main, user_errors=(ValueError, OSError))
