"""Shared fixtures: the optional ../shared/data folder, and the tests dir on sys.path for helper modules."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `configs`
from tests_shared import shared_data_or_skip  # noqa: E402  (after the path above)
# Every test computes on the CPU: with the TPU compiler installed (the test extra), jax would otherwise probe for
# TPU chips at start. The ahead-of-time TPU compiles need no chip (ssa_jax/train/targets.py). Subprocesses
# inherit both; several processes may load libtpu at once (the multi-process tests).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture
def shared_data() -> Path:
  """../shared/data beside the checkout; skips the test when it is absent (fails under CI=true)."""
  return shared_data_or_skip()
