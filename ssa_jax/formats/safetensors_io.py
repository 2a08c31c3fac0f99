"""Reads .safetensors files memory-mapped, bf16 included (the `safetensors` numpy API has no bf16), local or gs://."""

from __future__ import annotations

import json
import struct
from typing import Iterator

import ml_dtypes
import numpy as np
from etils import epath

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path: epath.PathLike) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (name, array) of one .safetensors file; local files are memory-mapped, not read whole."""
  path = epath.Path(path)
  if path.as_posix().startswith("/") or "://" not in str(path):
    raw = np.memmap(str(path), dtype=np.uint8, mode="r")
  else:
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
  (header_len,) = struct.unpack("<Q", raw[:8].tobytes())
  header = json.loads(raw[8 : 8 + header_len].tobytes())
  base = 8 + header_len
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    yield name, raw[base + start : base + end].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
