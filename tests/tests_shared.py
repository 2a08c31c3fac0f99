"""The optional ../shared/data folder for tests that are not fixtures-based (module-scoped fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data_or_skip() -> Path:
  """../shared/data beside the checkout; skips the calling test when it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} is absent (real tokenizers and benchmark files)")
  return SHARED_DATA
