"""The platform a program is traced for, which can differ from the host's (ahead-of-time TPU / GPU compiles)."""

from __future__ import annotations

import jax


def traced_platform() -> str:
  """The platform being compiled for: that of the mesh in context (`jax.set_mesh`), else jax's default."""
  mesh = jax.sharding.get_abstract_mesh()
  return jax.default_backend() if mesh.empty else mesh.abstract_device.platform
