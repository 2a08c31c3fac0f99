"""The optional ../shared/data folder for tests that are not fixtures-based (module-scoped fixtures)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data_or_skip(*parts: str) -> Path:
  """../shared/data beside the checkout (or a path under it). Absent: the calling test is skipped on a
  user's machine, and fails under CI=true, where ../shared is always laid beside the clone."""
  path = SHARED_DATA.joinpath(*parts)
  if not path.exists():
    message = f"{path} is absent (real tokenizers and benchmark files: ../shared/data beside the checkout)"
    if os.environ.get("CI") == "true":
      pytest.fail(message + "; CI always has it")
    pytest.skip(message)
  return path


class ByteTokenizer:
  """One token per UTF-8 byte, EOS 256, no BOS: a tokenizer whose output the data tests can predict exactly."""

  path, eos_id, bos_id, vocab_size, adds_bos_by_default = "bytes", 256, None, 257, False

  def encode(self, text, add_bos=None):
    return list(text.encode("utf-8"))

  def encode_batch(self, texts, add_bos=None):
    return [self.encode(t) for t in texts]

  def decode(self, ids):
    return bytes(i for i in ids if i < 256).decode("utf-8")


class ShiftedByteTokenizer:
  """Bytes + 2 (0 = EOS, 1 = BOS), no BOS by default: prompt characters and tokens are one to one, no files."""

  path, eos_id, bos_id, adds_bos_by_default, vocab_size = "bytes", 0, 1, False, 258

  def encode(self, text, add_bos=None):
    return ([1] if add_bos else []) + [b + 2 for b in text.encode()]

  def encode_batch(self, texts, add_bos=None):
    return [self.encode(t, add_bos) for t in texts]

  def decode(self, ids):
    return bytes(i - 2 for i in ids if i >= 2).decode(errors="replace")
