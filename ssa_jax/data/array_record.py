"""`config.data.format='array_record'`: batches of pre-tokenized windows read with grain (no tokenizing).

`config.data.path` is the directory of a dataset written by `python -m ssa_jax.data.tfds_builder` (the
one holding dataset_info.json): each record one window `{"tokens": int32[seq_len + 1]}`.

Layout (why the global batch does not depend on the process count P): the split's N windows are put in
one global order (for training a grain index shuffle by `config.data.seed`, reshuffled every epoch and
repeated; for validation file order, cut to whole global batches), global batch t being windows
[t B, (t + 1) B) of it. Those windows are grouped in blocks of B / P consecutive ones and process p reads
blocks p, p + P, p + 2P, ...: its t-th batch is rows [p B/P, (p + 1) B/P) of global batch t, whatever P.

Every step is random access (grain.MapDataset), so grain's iterator state (`{"next_index": t}`, the same on
every process) is the whole position; it travels inside `get_state()`'s JSON, saved with the checkpoint.
"""

from __future__ import annotations

import copy

import ml_collections
import numpy as np
from etils import epath

from ssa_jax.errors import ConfigError
from ssa_jax.runtime.gcs import require_gcs

_STATE_VERSION = 1


def _load_builder(path: str):
  """The tfds builder of the prepared dataset at `path`; errors name config.data.path."""
  # Only the array_record format needs tensorflow_datasets (seconds to import): not every pipeline import.
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  require_gcs(path, "config.data.path")
  if not path or not (epath.Path(path) / "dataset_info.json").exists():
    raise ConfigError(f"config.data.path: {path!r} is not a dataset written by `python -m ssa_jax.data."
                      "tfds_builder` (expected the directory holding dataset_info.json and *.array_record-* "
                      "files) as config.data.format='array_record' needs")
  return tfds.builder_from_directory(path)


class ArrayRecordIterator:
  """`next(it)` -> {"tokens": int32 [B / P, seq_len + 1]}; the LMIterator interface (state, stats, close)."""

  def __init__(self, data_cfg: ml_collections.ConfigDict, *, split: str, seq_len: int, global_batch_size: int,
               process_index: int, process_count: int, repeat: bool, max_batches: int | None = None):
    # Only the array_record format reads with grain and tfds (slow to import with their dependencies).
    import grain  # pylint: disable=import-outside-toplevel
    from ssa_jax.data.tfds_builder import grain_dataset  # pylint: disable=import-outside-toplevel

    if not 0 <= data_cfg.seed < 2**32:
      raise ConfigError(f"config.data.seed: expected an int in [0, 2**32) for grain's shuffle, got {data_cfg.seed}")
    builder = _load_builder(data_cfg.path)
    if split not in builder.info.splits:
      raise ConfigError(f"config.data.path: {data_cfg.path!r} has no split {split!r} (it has "
                        f"{sorted(builder.info.splits)}); see config.data.train_split / validation_split")
    window = builder.info.features["tokens"].shape[0]
    if window != seq_len + 1:
      raise ConfigError(f"config.train.seq_len: {seq_len}, but {data_cfg.path!r} holds windows of {window} tokens "
                        f"(seq_len {window - 1}); build the dataset again with --seq_len={seq_len}")
    source = grain_dataset(builder, split)
    self._num_records, self._window, self._batch, self._split = len(source), window, global_batch_size, split
    self._seed, self._repeat = int(data_cfg.seed), repeat
    self._rows = global_batch_size // process_count
    whole = self._num_records // global_batch_size  # whole global batches in one pass
    if whole == 0:
      raise ConfigError(f"config.data.path: split {split!r} has {self._num_records} windows, fewer than one "
                        f"global batch of {global_batch_size}")
    if repeat:
      ordered = source.shuffle(seed=self._seed).repeat()
      self.num_batches = max_batches
    else:
      ordered = source[:whole * global_batch_size]
      self.num_batches = whole if max_batches is None else min(whole, max_batches)
    ds = ordered.map(lambda example: example["tokens"])
    ds = ds.batch(self._rows, drop_remainder=True, batch_fn=np.stack)[process_index::process_count]
    if self.num_batches is not None:
      ds = ds[:self.num_batches]
    self._iter = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=data_cfg.num_threads,
                                                           prefetch_buffer_size=data_cfg.prefetch)))
    self._step = 0

  def _layout(self) -> dict:
    return {"version": _STATE_VERSION, "format": "array_record", "split": self._split, "seed": self._seed,
            "repeat": self._repeat, "window": self._window, "global_batch_size": self._batch,
            "num_records": self._num_records}

  def get_state(self) -> dict:
    """JSON-serialisable state after the last batch returned (grain's iterator state inside)."""
    # "streams" keeps the trainer's per-process merge of LMIterator states working; nothing is per process.
    return {**self._layout(), "step": self._step, "streams": {}, "grain": copy.deepcopy(self._iter.get_state())}

  def set_state(self, state: dict) -> None:
    """Continue right after the batch whose `get_state()` this is (saved with any process count)."""
    for key, value in self._layout().items():
      if state.get(key) != value:
        raise ValueError(f"data iterator state: {key}={state.get(key)!r} does not match this iterator's "
                         f"{value!r} (was it saved with another data config, split or batch layout?)")
    self._iter.set_state(state["grain"])
    self._step = int(state["step"])

  def stats(self) -> dict[str, int]:
    """Counters after the last batch returned (this process's rows): windows and tokens."""
    windows = self._step * self._rows
    return {"windows": windows, "tokens": windows * self._window}

  def close(self) -> None:
    """Stop grain's prefetch threads."""
    close = getattr(self._iter, "close", None)
    if close is not None:
      close()

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    tokens = next(self._iter)
    self._step += 1
    return {"tokens": tokens}
