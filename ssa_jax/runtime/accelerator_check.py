"""A warning for the most common silent slowdown: an NVIDIA GPU on the machine, but a CPU-only jax installed."""

from __future__ import annotations

import glob
import os
import shutil
import sys

import jax


def cpu_jax_on_gpu_machine_warning(backend: str | None = None, gpu: str | None = None) -> str | None:
  """The warning text when an NVIDIA GPU is visible (`gpu`, default: a /dev/nvidia* device or nvidia-smi on PATH)
  but jax's default backend (`backend`, default: jax's) is the CPU; None otherwise, or when JAX_PLATFORMS asks
  for the CPU on purpose."""
  if (backend or jax.default_backend()) != "cpu" or os.environ.get("JAX_PLATFORMS", "").strip() == "cpu":
    return None
  seen = gpu or min(glob.glob("/dev/nvidia[0-9]*"), default=None) or shutil.which("nvidia-smi")
  if seen is None:
    return None
  return (f"warning: an NVIDIA GPU is visible on this machine ({seen}) but jax runs on the CPU (jax "
          f"{jax.__version__}, backend 'cpu'): install jax's CUDA build with pip install -e '.[cuda]' "
          f"(TPU VMs: pip install -e '.[tpu]')")


def warn_if_accelerator_unused() -> None:
  """Prints cpu_jax_on_gpu_machine_warning() to stderr when it applies (train.py and eval.py call it)."""
  message = cpu_jax_on_gpu_machine_warning()
  if message and jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)
