"""The `config.data` section: defaults and early validation (errors name the field)."""

from __future__ import annotations

import ml_collections
from etils import epath

from ssa_jax.data import demo
from ssa_jax.errors import ConfigError
from ssa_jax.runtime.gcs import require_gcs

FORMATS = ("auto", "jsonl_zst", "jsonl", "parquet", "text", "array_record")


def data_config() -> ml_collections.ConfigDict:
  """Defaults of the data section; `path=''` is the demo corpus, `tokenizer_path=''` the demo BPE."""
  c = ml_collections.ConfigDict()
  # A SlimPajama root ({train,validation,test}/chunk*/*.jsonl.zst), a split dir, a dir of files whose
  # names carry the split (wiki.train.raw, wiki.valid.raw), or one file; local or gs://. '' = demo corpus.
  c.path = ""
  # One of FORMATS; auto picks by file extension. 'array_record': `path` is a dataset of pre-tokenized
  # windows written by `python -m ssa_jax.data.tfds_builder` (read with grain, no tokenizing while training).
  c.format = "auto"
  c.tokenizer_path = ""  # tokenizer.json / SentencePiece .model / a dir; '' = the demo BPE.
  c.demo_vocab_size = 2048  # vocab size of the demo BPE trained when tokenizer_path is ''.
  c.cache_dir = "~/.cache/ssa_jax"  # where the demo corpus and demo BPE are written once.
  c.seed = 0  # file order per epoch and mixture sampling.
  # Per-document sampling rate by meta.redpajama_set_name (1.0 = natural share, 0.5 = half of its
  # documents, 2.0 = each document twice); sets not named keep 1.0.
  c.mixture = ml_collections.ConfigDict()
  c.exclude = ()  # set names dropped entirely, e.g. ("RedPajamaGithub",).
  # Independent reader streams; the global batch depends on it, not on the process count, as long as
  # the process count divides it and it divides the global batch. 0 = auto (see pipeline.py).
  c.num_streams = 0
  c.num_threads = 2  # tokenizer / reader threads.
  c.prefetch = 4  # batches prepared ahead of the training step.
  c.docs_per_chunk = 64  # documents read and tokenized together (encode_batch granularity).
  c.train_split = "train"
  c.validation_split = "validation"  # split the trainer evaluates on.
  # True: each document of a packed window is its own sequence (positions, hence RoPE, learned positions and
  # SSA's log n, restart at the token after each EOS; attention stays inside the document; the prediction made
  # at an EOS, of the next document's first token, leaves the loss). False: the window is one sequence, as the
  # SSA authors trained (lit-gpt's packed dataset). See docs/training.md.
  c.document_masking = False
  return c


def resolve_paths(cfg: ml_collections.ConfigDict) -> tuple[str, str]:
  """(corpus path, tokenizer path) with the demo corpus / demo BPE filled in where they are ''."""
  path = cfg.path or demo.ensure_demo_corpus(cfg.cache_dir)
  tok = cfg.tokenizer_path or demo.ensure_demo_tokenizer(cfg.cache_dir, cfg.demo_vocab_size)
  return path, tok


def validate_data_config(cfg: ml_collections.ConfigDict) -> None:
  """Raise ConfigError naming the field of the first invalid value in `cfg` (the data section)."""
  for field in ("path", "tokenizer_path"):
    require_gcs(cfg[field], f"config.data.{field}")
    if cfg[field] and not epath.Path(cfg[field]).exists():
      raise ConfigError(f"config.data.{field}: {cfg[field]!r} does not exist")
  for field in ("train_split", "validation_split"):
    if not isinstance(cfg[field], str) or not cfg[field]:
      raise ConfigError(f"config.data.{field}: expected a split name (e.g. 'train', 'validation'), got {cfg[field]!r}")
  if not isinstance(cfg.document_masking, bool):
    raise ConfigError(f"config.data.document_masking: expected True or False, got {cfg.document_masking!r}")
  if cfg.format not in FORMATS:
    raise ConfigError(f"config.data.format: expected one of {FORMATS}, got {cfg.format!r}")
  if cfg.format == "array_record" and not cfg.path:
    raise ConfigError("config.data.path: config.data.format='array_record' needs the directory of a dataset "
                      "written by `python -m ssa_jax.data.tfds_builder` (the demo corpus is streamed only)")
  for name, weight in dict(cfg.mixture).items():
    if not isinstance(weight, (int, float)) or weight < 0:
      raise ConfigError(f"config.data.mixture.{name}: expected a number >= 0, got {weight!r}")
  if isinstance(cfg.exclude, str) or not all(isinstance(e, str) for e in cfg.exclude):
    raise ConfigError(f"config.data.exclude: expected a list of set names, got {cfg.exclude!r}")
  for field, minimum in (("num_streams", 0), ("num_threads", 1), ("prefetch", 1), ("docs_per_chunk", 1),
                         ("demo_vocab_size", 258)):
    value = cfg[field]
    if not isinstance(value, int) or value < minimum:
      raise ConfigError(f"config.data.{field}: expected an int >= {minimum}, got {value!r}")
