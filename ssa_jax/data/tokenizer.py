"""Tokenizers from a path: a HF `tokenizer.json` (GPT-2, Pythia, ...) or a SentencePiece `.model` (Llama).

One interface for both (`Tokenizer`), so the data pipeline and the evaluation code never branch on the kind.
`add_bos=None` follows the tokenizer's own default (what `transformers` does with `add_special_tokens=True`):
Llama's SentencePiece model adds BOS, GPT-2 / Pythia do not.
Only BOS is ever added: EOS is the pipeline's document separator and is appended by the packer.
"""

from __future__ import annotations

import json
from typing import Protocol, Sequence

from etils import epath

from ssa_jax.runtime.gcs import require_gcs

# Names tried, in order, when no tokenizer_config.json beside tokenizer.json says which token is EOS / BOS.
_EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")
_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")


class Tokenizer(Protocol):
  """What the rest of ssa_jax relies on from a tokenizer."""

  path: str
  eos_id: int
  bos_id: int | None
  vocab_size: int
  adds_bos_by_default: bool

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]: ...

  def encode_batch(self, texts: Sequence[str], add_bos: bool | None = None) -> list[list[int]]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


def _special_name(value) -> str | None:
  """tokenizer_config.json stores special tokens as a string or as {"content": ...}."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


def _wants_bos(tok: Tokenizer, add_bos: bool | None) -> bool:
  """`add_bos`, or the tokenizer's default when None; a ValueError when it asks for a BOS the tokenizer lacks."""
  add = tok.adds_bos_by_default if add_bos is None else add_bos
  if add and tok.bos_id is None:
    raise ValueError(f"tokenizer {tok.path}: add_bos=True but it has no BOS token")
  return add


class HFTokenizer:
  """A `tokenizers.Tokenizer` read from a tokenizer.json."""

  def __init__(self, path: str):
    import tokenizers  # pylint: disable=import-outside-toplevel

    self.path = str(path)
    file = epath.Path(path)
    try:
      self._tok = tokenizers.Tokenizer.from_str(file.read_text())
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON.
      raise ValueError(f"tokenizer {self.path}: not a valid HF tokenizer.json ({e})") from e
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    special = {}
    config_file = file.parent / "tokenizer_config.json"
    if config_file.exists():
      special = json.loads(config_file.read_text())

    # The tokenizer's own BOS default: does its post-processor put a token in front of the text?
    plain = self._tok.encode("a", add_special_tokens=False).ids
    full = self._tok.encode("a", add_special_tokens=True).ids
    prepended = full[0] if len(full) > len(plain) and full[: len(plain)] != plain else None
    self.adds_bos_by_default = prepended is not None

    def token(key: str, names: tuple[str, ...]) -> tuple[str | None, int | None]:
      """(name, id) of the special token tokenizer_config.json names under `key`, else of the first of `names` known."""
      name = _special_name(special.get(key)) or next((n for n in names if self._tok.token_to_id(n) is not None), None)
      return name, None if name is None else self._tok.token_to_id(name)

    eos_name, self.eos_id = token("eos_token", _EOS_NAMES)
    if self.eos_id is None:
      raise ValueError(f"tokenizer {self.path}: no EOS token found (tried tokenizer_config.json "
                       f"and {_EOS_NAMES}); documents cannot be separated")
    self.bos_id = prepended if prepended is not None else token("bos_token", _BOS_NAMES)[1]
    if self.bos_id is None and eos_name == "<|endoftext|>":
      # GPT-2 and GPT-NeoX have a single special token; their HF configs name it BOS as well.
      self.bos_id = self.eos_id

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
    """Token ids of `text`; BOS in front per `add_bos` (None: the tokenizer's default)."""
    ids = self._tok.encode(text, add_special_tokens=False).ids
    return [self.bos_id] + ids if _wants_bos(self, add_bos) else ids

  def encode_batch(self, texts: Sequence[str], add_bos: bool | None = None) -> list[list[int]]:
    """`encode` over many texts; the Rust side runs them in parallel and releases the GIL."""
    bos = [self.bos_id] if _wants_bos(self, add_bos) else []
    return [bos + e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`, special tokens included (as transformers' decode does by default)."""
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

  def token_name(self, token_id: int) -> str:
    """The vocabulary entry of `token_id` (e.g. '<|endoftext|>')."""
    return self._tok.id_to_token(token_id)


class SentencePieceTokenizer:
  """A SentencePiece `.model` (Llama); adds BOS by default like transformers' LlamaTokenizer."""

  def __init__(self, path: str):
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel

    self.path = str(path)
    try:
      self._sp = spm.SentencePieceProcessor(model_proto=epath.Path(path).read_bytes())
    except Exception as e:  # sentencepiece raises RuntimeError / OSError variants.
      raise ValueError(f"tokenizer {self.path}: not a valid SentencePiece model ({e})") from e
    self.vocab_size = self._sp.vocab_size()
    if self._sp.eos_id() < 0:
      raise ValueError(f"tokenizer {self.path}: SentencePiece model has no EOS id")
    self.eos_id = self._sp.eos_id()
    self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
    self.adds_bos_by_default = self.bos_id is not None

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
    """Token ids of `text`; BOS in front per `add_bos` (None: add, as Llama does)."""
    return self._sp.encode(text, add_bos=_wants_bos(self, add_bos))

  def encode_batch(self, texts: Sequence[str], add_bos: bool | None = None) -> list[list[int]]:
    """`encode` over many texts (SentencePiece's C++ side releases the GIL)."""
    return self._sp.encode(list(texts), add_bos=_wants_bos(self, add_bos))

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`."""
    return self._sp.decode([int(i) for i in ids])


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # what a directory holding a tokenizer holds


def tokenizer_in(directory: epath.PathLike) -> str | None:
  """The tokenizer.json / tokenizer.model file in `directory` (tokenizer.json first), or None."""
  directory = epath.Path(directory)
  for name in TOKENIZER_FILES:
    if (directory / name).exists():
      return str(directory / name)
  return None


def tokenizer_file(path: epath.PathLike) -> epath.Path:
  """The tokenizer file `path` names: itself, or the tokenizer.json / tokenizer.model of a directory."""
  p = epath.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"tokenizer path {str(path)!r} does not exist")
  if p.is_dir():
    found = tokenizer_in(p)
    if found is None:
      raise FileNotFoundError(f"tokenizer dir {str(path)!r} holds neither {' nor '.join(TOKENIZER_FILES)}")
    p = epath.Path(found)
  return p


def load_tokenizer(path: str) -> Tokenizer:
  """A tokenizer from a tokenizer.json, a SentencePiece .model, or a directory holding one of them."""
  require_gcs(str(path), "tokenizer path")
  p = tokenizer_file(path)
  if p.name.endswith(".model"):
    return SentencePieceTokenizer(str(p))
  if p.name.endswith(".json"):
    return HFTokenizer(str(p))
  raise ValueError(f"tokenizer path {path!r}: expected a tokenizer.json, a SentencePiece .model, "
                   "or a directory holding one")
