"""A TFDS builder that pre-tokenizes local SlimPajama shards into packed ArrayRecord windows (no TensorFlow).

`python -m ssa_jax.data.tfds_builder SOURCE_DIR --tokenizer=... --seq_len=2048 --data_dir=...` prepares it and
prints the `config.data.path` to train from with `config.data.format=array_record` (read with grain: array_record.py).
Every example is one window `{"tokens": int32[seq_len + 1]}` of the split's documents (sorted file order, BOS per
tokenizer, joined by EOS, the last partial window dropped), written in order (`disable_shuffling`);
tensorflow-datasets writes ArrayRecord without TensorFlow installed. By hand: `grain_dataset(builder, "train")`.
"""

from __future__ import annotations

import hashlib
import logging

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from ssa_jax.data.corpus_scan import ScanResult, documents
from ssa_jax.data.sources import list_files
from ssa_jax.data.tokenizer import load_tokenizer
from ssa_jax.runtime import cli_errors
from ssa_jax.runtime.gcs import require_gcs

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
    window, buffer, index, result = self._seq_len + 1, [], 0, ScanResult()
    for _, _, ids in documents(self._source_dir, split, load_tokenizer(self._tokenizer_path), result):
      buffer.extend(ids)
      while len(buffer) >= window:
        yield index, {"tokens": np.asarray(buffer[:window], np.int32)}
        buffer, index = buffer[window:], index + 1
    if result.bad:
      _log.warning("tfds %s/%s: skipped %d bad records", self.name, split, sum(result.bad.values()))


def build_tokenized(source_dir: str, tokenizer_path: str, seq_len: int, data_dir: str,
                    splits: tuple[str, ...] = ("train", "validation")) -> SlimPajamaTokenized:
  """Prepare (once) the ArrayRecord dataset under `data_dir`, inputs checked before writing; returns the builder."""
  require_gcs(source_dir, "source_dir")
  require_gcs(data_dir, "data_dir")
  if seq_len < 1:
    raise ValueError(f"--seq_len: expected >= 1, got {seq_len}")
  load_tokenizer(tokenizer_path)
  for split in splits:
    list_files(source_dir, split)
  builder = SlimPajamaTokenized(source_dir=source_dir, tokenizer_path=tokenizer_path, seq_len=seq_len,
                                splits=splits, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return builder


def _main(argv) -> None:
  if len(argv) != 2:
    raise cli_errors.UsageError("usage: python -m ssa_jax.data.tfds_builder SOURCE_DIR --tokenizer=PATH "
                                "--seq_len=N --data_dir=DIR [--splits=train,validation]")
  f = flags.FLAGS
  builder = build_tokenized(argv[1], f.tokenizer, f.seq_len, f.data_dir, tuple(f.splits.split(",")))
  for split, info in builder.info.splits.items():
    print(f"{split}: {info.num_examples} windows of {f.seq_len + 1} tokens")
  print(f"config.data.format=array_record config.data.path={builder.data_dir}")


def grain_dataset(builder: SlimPajamaTokenized, split: str):
  """A grain.MapDataset of {"tokens": int32[seq_len + 1]} over the builder's ArrayRecord files."""
  files = [str(f) for f in builder.info.splits[split].filepaths]
  features = builder.info.features
  return grain.MapDataset.source(grain.sources.ArrayRecordDataSource(files)).map(
      features.deserialize_example_np)


if __name__ == "__main__":
  flags.DEFINE_string("tokenizer", None, "tokenizer.json / SentencePiece .model / dir holding one.", required=True)
  flags.DEFINE_integer("seq_len", None, "Training sequence length (windows of seq_len + 1 tokens).", required=True)
  flags.DEFINE_string("data_dir", None, "Where the dataset is written (local or gs://).", required=True)
  flags.DEFINE_string("splits", "train,validation", "Comma-separated splits to prepare.")
  cli_errors.run(_main, user_errors=(ValueError, OSError), config_flag_names=())
