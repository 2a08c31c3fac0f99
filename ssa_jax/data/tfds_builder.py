"""A TFDS builder that pre-tokenizes local SlimPajama shards into packed ArrayRecord windows (no TensorFlow).

For users who prefer random access: every example is one window `{"tokens": int32[seq_len + 1]}` of the
split's documents (sorted file order, BOS per tokenizer, joined by EOS, the last partial window dropped),
written in order (`disable_shuffling`) as ArrayRecord. tensorflow-datasets writes ArrayRecord and
serializes examples without TensorFlow installed. Read it back with grain:

  builder = build_tokenized(source_dir, tokenizer_path, seq_len, data_dir)
  ds = grain_dataset(builder, "train")             # grain.MapDataset of {"tokens": np.int32[seq_len+1]}
  ds = ds[process_index::process_count].shuffle(seed=0).batch(batch_size // process_count)
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import tensorflow_datasets as tfds

from ssa_jax.data.readers import read_records
from ssa_jax.data.sources import list_files
from ssa_jax.data.tokenizer import load_tokenizer

_log = logging.getLogger(__name__)


class SlimPajamaTokenized(tfds.core.GeneratorBasedBuilder):
  """Packed, pre-tokenized windows of local SlimPajama-layout shards."""

  VERSION = tfds.core.Version("1.0.0")

  # tfds looks for a checksums file beside the builder's module through `importlib_resources` (a PyPI
  # backport it does not install); this builder downloads nothing, so it has no code path to search.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):  # pylint: disable=invalid-overridden-method
    return None

  def __init__(self, *, source_dir: str, tokenizer_path: str, seq_len: int,
               splits: tuple[str, ...] = ("train", "validation"), **kwargs):
    self._source_dir, self._tokenizer_path, self._seq_len, self._splits = source_dir, tokenizer_path, seq_len, splits
    # The config name keys the output dir, so other tokenizers / lengths never overwrite each other.
    tag = hashlib.sha1(f"{source_dir}|{tokenizer_path}".encode()).hexdigest()[:10]
    self.BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f"seq{seq_len}_{tag}")]  # pylint: disable=invalid-name
    super().__init__(config=self.BUILDER_CONFIGS[0], **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self._source_dir} tokenized with {self._tokenizer_path}, windows of {self._seq_len + 1}",
        features=tfds.features.FeaturesDict(
            {"tokens": tfds.features.Tensor(shape=(self._seq_len + 1,), dtype=np.int32)}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local; nothing is downloaded.
    return {split: self._generate_examples(split) for split in self._splits}

  def _generate_examples(self, split: str):
    tok = load_tokenizer(self._tokenizer_path)
    window, buffer, index, bad = self._seq_len + 1, [], 0, 0
    for file in list_files(self._source_dir, split):
      for rec in read_records(file):
        if rec.bad is not None:
          bad += 1
          continue
        buffer.extend(tok.encode(rec.text) + [tok.eos_id])
        while len(buffer) >= window:
          yield index, {"tokens": np.asarray(buffer[:window], np.int32)}
          index, buffer = index + 1, buffer[window:]
    if bad:
      _log.warning("tfds %s/%s: skipped %d bad records", self.name, split, bad)


def build_tokenized(source_dir: str, tokenizer_path: str, seq_len: int, data_dir: str,
                    splits: tuple[str, ...] = ("train", "validation")) -> SlimPajamaTokenized:
  """Prepare (once) the ArrayRecord dataset under `data_dir`; returns the builder."""
  builder = SlimPajamaTokenized(source_dir=source_dir, tokenizer_path=tokenizer_path, seq_len=seq_len,
                                splits=splits, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return builder


def grain_dataset(builder: SlimPajamaTokenized, split: str):
  """A grain.MapDataset of {"tokens": int32[seq_len + 1]} over the builder's ArrayRecord files."""
  import grain  # pylint: disable=import-outside-toplevel

  files = [str(f) for f in builder.info.splits[split].filepaths]
  features = builder.info.features
  return grain.MapDataset.source(grain.sources.ArrayRecordDataSource(files)).map(
      features.deserialize_example_np)
