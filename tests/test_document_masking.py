"""config.data.document_masking: a packed window's loss is that of its documents each computed alone (XLA and
splash in interpret mode, every family), microbatches keep the whole batch's mean, and a run resumes exactly."""

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssa_jax.model.decoder import Decoder
from ssa_jax.model.documents import document_segments
from ssa_jax.model.params import init_variables
from ssa_jax.train.loop import train
from ssa_jax.train.loss import next_token_cross_entropy
from ssa_jax.train.state import TrainState
from ssa_jax.train.step import make_train_step
from tiny_models import tiny_config, with_random_temperatures
from train_configs import tiny_run_config

EOS = 0


def _packed_rows(rows: int, width: int, seed: int) -> np.ndarray:
  """(rows, width) tokens: documents of 2 to 12 tokens from 1..63, each ended by EOS, cut into rows."""
  rng = np.random.default_rng(seed)
  stream: list[int] = []
  while len(stream) < rows * width:
    stream += list(rng.integers(1, 64, size=rng.integers(2, 13))) + [EOS]
  return np.asarray(stream[:rows * width], np.int32).reshape(rows, width)


def _pieces(row: np.ndarray) -> list[np.ndarray]:
  """A row cut after each EOS: the documents (or the parts of them) it holds."""
  cuts = [i + 1 for i, t in enumerate(row) if t == EOS and i + 1 < len(row)]
  return np.split(row, cuts)


def _alone_loss(model, variables, rows_BT1: np.ndarray) -> float:
  """Summed next-token NLL of each document run alone (one per row, positions from 0, no mask), over the count
  of predictions: an independent path (no segment ids, no loss weights). Each document is padded on the right
  to one length, which causal attention keeps out of its real tokens' view, so that one call runs them all."""
  pieces = [piece for row in rows_BT1 for piece in _pieces(row) if len(piece) >= 2]
  width = rows_BT1.shape[1]
  docs_NW = np.stack([np.pad(piece, (0, width - len(piece))) for piece in pieces])
  logits_NWV = np.asarray(model.apply(variables, jnp.asarray(docs_NW)), np.float64)
  total = 0.0
  for piece, logits_WV in zip(pieces, logits_NWV):
    logits_TV = logits_WV[:len(piece) - 1]
    logz_T = np.log(np.exp(logits_TV - logits_TV.max(-1, keepdims=True)).sum(-1)) + logits_TV.max(-1)
    total += float(np.sum(logz_T - logits_TV[np.arange(len(piece) - 1), piece[1:]]))
  return total / sum(len(piece) - 1 for piece in pieces)


def test_document_segments_follow_the_eos_tokens():
  tokens = jnp.asarray([[5, 6, EOS, 7, EOS, EOS, 8, 9], [EOS, 1, 2, 3, 4, 5, 6, 7]])
  segments, positions = document_segments(tokens, EOS)
  np.testing.assert_array_equal(segments, [[0, 0, 0, 1, 1, 2, 3, 3], [0, 1, 1, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(positions, [[0, 1, 2, 0, 1, 0, 0, 1], [0, 0, 1, 2, 3, 4, 5, 6]])


# Learned positions (gpt2), partial RoPE (neox) and GQA with RoPE (llama); splash takes the segment ids itself.
@pytest.mark.parametrize("family,impl,chunk", [("gpt2", "xla", 0), ("neox", "xla", 8), ("llama", "splash", 8)])
def test_packed_loss_equals_each_document_computed_alone(family, impl, chunk):
  # SSA on q and v with the log-n position term: positions that failed to restart would change tau.
  cfg = dataclasses.replace(tiny_config(family, max_seq_len=64, enabled=True), attention_impl=impl)
  model = Decoder(cfg)
  variables = init_variables(cfg, jax.random.PRNGKey(0))
  variables = {**variables, "params": with_random_temperatures(variables["params"])}
  rows_BT1 = _packed_rows(2, 41, seed=1)
  got, _ = next_token_cross_entropy(model, variables, jnp.asarray(rows_BT1), chunk, document_eos_id=EOS)
  want = _alone_loss(Decoder(dataclasses.replace(cfg, attention_impl="xla")), variables, rows_BT1)
  assert float(got) == pytest.approx(want, rel=2e-6)
  unmasked, _ = next_token_cross_entropy(model, variables, jnp.asarray(rows_BT1), chunk)
  assert abs(float(unmasked) - want) > 1e-3  # the rows do hold several documents


def test_microbatches_keep_the_whole_batchs_masked_mean():
  cfg = tiny_config("llama", max_seq_len=64, enabled=True)
  model, tx = Decoder(cfg), optax.sgd(0.1)
  variables = init_variables(cfg, jax.random.PRNGKey(0))
  state = TrainState(jnp.zeros((), jnp.int32), variables["params"], {}, tx.init(variables["params"]))
  batch = {"tokens": jnp.asarray(_packed_rows(4, 41, seed=2))}  # rows hold different numbers of documents
  results = [jax.jit(make_train_step(model, tx, lambda s: 0.1, m, 0, document_eos_id=EOS))(state, batch)
             for m in (1, 2)]
  (one, m1), (two, m2) = results
  assert float(m2["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(one.params), jax.tree_util.tree_leaves(two.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def short_documents(tmp_path_factory):
  """A corpus of one-line documents of 4 to 12 words (every training window holds several) and the demo BPE."""
  from ssa_jax.data import demo

  root = tmp_path_factory.mktemp("short_docs")
  words = "the cat sat on a mat while old dogs ran to see how far the river went before night came".split()
  rng = np.random.default_rng(0)
  for split, n in (("train", 400), ("validation", 40)):
    lines = [json.dumps({"text": " ".join(rng.choice(words, size=rng.integers(4, 13)))}) for _ in range(n)]
    (root / f"docs.{split}.jsonl").write_text("\n".join(lines) + "\n")
  return str(root), demo.ensure_demo_tokenizer(str(tmp_path_factory.mktemp("cache")), 512)


def _losses(workdir) -> dict[int, float]:
  lines = [json.loads(l) for l in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in lines if "loss" in r}


def test_a_document_masked_run_resumes_exactly(short_documents, tmp_path, monkeypatch):
  from ssa_jax.data.tokenizer import load_tokenizer
  from ssa_jax.train import loop

  make_step, eos_ids = loop.jit_loop_step, []

  def recording(*args, **kwargs):  # the loop's step is built with the tokenizer's EOS: masking is on
    eos_ids.append(kwargs.get("document_eos_id", args[8] if len(args) > 8 else None))
    return make_step(*args, **kwargs)

  monkeypatch.setattr(loop, "jit_loop_step", recording)
  config = tiny_run_config(*short_documents, steps=4, seq_len=64, checkpoint_every=2, eval_batches=0)
  config.model.vocab_size = 512
  config.mesh.num_devices = 1  # the quickest compile
  config.data.document_masking = True
  run = tmp_path / "run"
  train(config, str(run))
  straight = _losses(run)
  shutil.rmtree(run / "checkpoints" / "4")  # as if killed after step 4 and before its checkpoint
  (run / "summary.json").unlink()
  train(config, str(run))  # resumes from step 2: the data position and the state from checkpoint 2
  assert sorted(straight) == list(range(1, 5)) and _losses(run) == straight
  assert eos_ids == [load_tokenizer(short_documents[1]).eos_id] * 2
