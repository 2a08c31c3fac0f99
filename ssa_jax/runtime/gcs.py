"""gs:// paths need optional packages: a clear error naming the `gcs` extra before anything opens one.

etils.epath reads and writes gs:// through gcsfs (without TensorFlow), tensorboardX writes event files to
gs:// through google-cloud-storage; both come with `pip install 'ssa-jax[gcs]'`.
"""

from __future__ import annotations

import importlib.util
from typing import Sequence

from ssa_jax.errors import ConfigError

EPATH = ("gcsfs",)  # data, tokenizers, checkpoints, config.json / results.json (etils.epath)
TENSORBOARD = ("google.cloud.storage",)  # tensorboardX's gs:// event writer


class GcsSupportMissing(ConfigError, ImportError):
  """A gs:// path met a missing optional package (a ConfigError, so entry points print it in one line)."""


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # a missing parent package (google.cloud)
    return False


def require_gcs(path: str, what: str, modules: Sequence[str] = EPATH) -> None:
  """Raise GcsSupportMissing naming `what` and the `gcs` extra when `path` is gs:// and `modules` are missing."""
  if not str(path).startswith("gs://"):
    return
  missing = [m for m in modules if not _installed(m)]
  if missing:
    names = ", ".join(m.replace(".", "-") for m in missing)  # their pip names
    raise GcsSupportMissing(f"{what}: {path!r} is a gs:// path, which needs {names} (not installed); "
                            "install it with: pip install 'ssa-jax[gcs]'")
