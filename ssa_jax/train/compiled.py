"""Reading a compiled train step: memory per device, the attention kernel in it, an out-of-memory compile's
figures, and the compiler's roofline cost (TPU)."""

from __future__ import annotations

import collections
import re
from typing import Any

_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# The Pallas splash kernels are Mosaic custom calls named splash_{mha|mqa}_{fwd|dq|dkv}[_segmented]_...
# (jax.experimental.pallas.ops.tpu.splash_attention); cuDNN's fused attention is __cudnn$fmha... .
_SPLASH_CALL = re.compile(r"%(splash_(?:mha|mqa)_(fwd|dq|dkv)\w*?)(?:\.\d+)? = [^\n]*custom_call_target=\"tpu_custom_call\"")
_SPLASH_NAME = re.compile(r"splash_(?:mha|mqa)_(?:fwd|dq|dkv)")
_CUDNN_FMHA = "__cudnn$fmha"


def memory(compiled) -> dict[str, Any]:
  """Bytes per device from the executable's memory analysis (None where the backend gives none)."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return {"memory_bytes_per_device": None}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")
  sizes = {f: int(getattr(analysis, f, 0) or 0) for f in fields}
  # Live at the peak: inputs, outputs not aliased to (donated) inputs, and temporaries.
  total = (sizes["argument_size_in_bytes"] + sizes["output_size_in_bytes"] - sizes["alias_size_in_bytes"]
           + sizes["temp_size_in_bytes"])
  return {"memory_bytes_per_device": total, "memory_analysis": sizes}


def splash_calls(hlo_text: str) -> collections.Counter:
  """How many splash kernel calls of each phase ('fwd', 'dq', 'dkv') the compiled program's text holds."""
  return collections.Counter(phase for _, phase in _SPLASH_CALL.findall(hlo_text))


def attention_kernel(hlo_text: str) -> str:
  """The causal attention kernel in a program's text (compiled HLO, or lowered StableHLO): 'splash' (a Mosaic
  custom call of the splash kernel), 'cudnn' (cuDNN's fused attention custom call) or 'xla' (neither)."""
  if "tpu_custom_call" in hlo_text and _SPLASH_NAME.search(hlo_text):
    return "splash"
  if _CUDNN_FMHA in hlo_text:
    return "cudnn"
  return "xla"


def out_of_memory(error: Exception) -> dict[str, Any] | None:
  """An out-of-memory compile's figures: {'memory_bytes_per_device', 'compiler_hbm_bytes', 'compiler_error'},
  or None when `error` is something else.

  TPU's messages: 'Ran out of memory in memory space hbm. Used 20.43G of 15.75G hbm. ...' and 'the total
  memory required for HLO temporaries (26.84G) exceeds available HBM (15.75G)': the first size is the
  program's need, the second what the compiler may use (G = GiB).
  """
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
    return None
  line = next((l.strip() for l in text.splitlines() if "memory" in l.lower()), text.strip().splitlines()[0])
  sizes = [float(v) * _UNITS[u] for v, u in re.findall(r"(\d+(?:\.\d+)?)([KMGT])i?B?\b", line)]
  need, limit = (sizes + [None, None])[:2]
  return {"memory_bytes_per_device": None if need is None else int(need),
          "compiler_hbm_bytes": None if limit is None else int(limit), "compiler_error": line[:400]}


def roofline(compiled) -> dict[str, float] | None:
  """The compiler's cost analysis: {'optimal_seconds', 'flops', 'bytes_accessed'} per device (TPU), or None.

  optimal_seconds is XLA TPU's roofline: per instruction the larger of its FLOPs / peak and bytes / bandwidth,
  summed, with no overlap or interconnect time; a loop's body is counted once, and custom kernels (Pallas)
  cost nothing.
  """
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "optimal_seconds" not in cost:
    return None
  return {"optimal_seconds": float(cost["optimal_seconds"]), "flops": float(cost.get("flops", 0.0)),
          "bytes_accessed": float(cost.get("bytes accessed", 0.0))}
