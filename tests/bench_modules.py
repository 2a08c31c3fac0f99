"""A script of bench/ imported as a module, for tests that call its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_module(name: str) -> ModuleType:
  """bench/NAME.py as the module NAME (loaded once). bench/ is on sys.path while it loads, as when it runs as a
  script, so that it imports its neighbours (decode_cost imports fusion_table)."""
  if name in sys.modules:
    return sys.modules[name]
  spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
  # Registered before it runs: a dataclass defined in it looks its module up in sys.modules.
  module = sys.modules[name] = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(BENCH))
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  finally:
    sys.path.remove(str(BENCH))
  return module
