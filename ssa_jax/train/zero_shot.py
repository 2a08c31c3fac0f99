"""Zero-shot tasks while training (config.train.zero_shot_*): every zero_shot_every steps, the first
zero_shot_limit documents of each task, scored by the evaluation's own pieces (read_task, the Scorer, score_task,
aggregate: lm-eval's semantics, those of the end-of-run evaluation), recorded as zero_shot/<task>/<metric>.

A task that cannot be scored (its file missing, an exception while scoring) is one warning line and a count
(zero_shot/errors), never the end of the run. Every process scores every task on its own devices, as the
end-of-run evaluation does (no collective while scoring); process 0 writes the record. The Scorer is built once,
so its compiled programs serve every pass, and holds the parameters only during a pass.
"""

from __future__ import annotations

import time
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from ssa_jax.evaluate.metrics import aggregate
from ssa_jax.evaluate.preflight import check_options, missing_file
from ssa_jax.evaluate.readers import read_task
from ssa_jax.evaluate.runner import score_task
from ssa_jax.evaluate.scoring import Scorer
from ssa_jax.evaluate.tasks import TASKS, Doc
from ssa_jax.model.decoder import Decoder
from ssa_jax.train.context import RunContext
from ssa_jax.train.evaluation import local_variables
from ssa_jax.train.metrics import MetricsWriter, log

PREFIX = "zero_shot"


class ZeroShot:
  """Scores config.train.zero_shot_tasks at the steps `due` names, into the run's metrics."""

  def __init__(self, ctx: RunContext, model: Decoder, writer: MetricsWriter):
    t = ctx.train
    self.names, self.every = t.zero_shot_task_names, t.zero_shot_every
    self._limit = t.zero_shot_limit or None
    self._data_dir, self._batch_size, self._max_length = ctx.eval.data_dir, ctx.eval.batch_size, t.seq_len
    self._model, self._tokenizer, self._writer = model, ctx.tokenizer, writer
    self._docs: dict[str, list[Doc]] = {}  # each task's documents, read at its first pass
    self._scorer: Scorer | None = None

  def due(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def __call__(self, step: int, variables: Any) -> dict[str, Any]:
    """Scores every task on `variables` at `step`; writes and returns the record (one console line)."""
    start, record, failed = time.time(), {}, {}
    try:
      scorer = self._scorer_on(variables)
    except Exception as e:  # pylint: disable=broad-except  (an evaluation never ends the run)
      scorer, failed = None, {name: e for name in self.names}
    try:
      for name in self.names if scorer is not None else ():
        try:
          record.update(self._task(scorer, name))
        except Exception as e:  # pylint: disable=broad-except
          failed[name] = e
    finally:
      if scorer is not None:
        scorer.variables = None  # the Scorer's copy of the parameters lives for the pass only
    for name, e in failed.items():  # one line each, however long or multi-line the error's text
      why = " ".join(f"{type(e).__name__}: {e}".split())[:1000]
      log(f"warning: step {step}: zero-shot task {name} not scored: {why}")
    seconds = time.time() - start
    record.update({f"{PREFIX}/errors": len(failed), f"{PREFIX}/seconds": seconds})
    self._writer.write({"step": step, **record})
    log(f"step {step}: zero-shot {self._summary(record)} ({seconds:.1f}s)")
    return record

  def _scorer_on(self, variables: Any) -> Scorer:
    """The Scorer (built at the first pass, checked as run_eval checks it) holding `variables`."""
    local = local_variables(variables)
    if self._scorer is None:
      check_options(self._model.config, self._tokenizer, self.names, self._limit, self._max_length)
      self._scorer = Scorer(self._model, local, self._max_length, self._batch_size, show_progress=False)
    else:  # as Scorer.__init__ places them: replicated over this process's devices
      self._scorer.variables = jax.device_put(local, NamedSharding(self._scorer.mesh, P()))
    return self._scorer

  def _documents(self, name: str) -> list[Doc]:
    """The task's first `limit` documents (read once: the files do not change while a run trains)."""
    if name not in self._docs:
      why = missing_file(name, self._data_dir or None)
      if why:
        raise FileNotFoundError(why.replace("--data_dir", "config.eval.data_dir"))
      read = read_task(TASKS[name], self._data_dir, self._limit)
      if not read.docs:
        raise ValueError(f"{read.path} holds no valid documents")
      self._docs[name] = read.docs
    return self._docs[name]

  def _task(self, scorer: Scorer, name: str) -> dict[str, float]:
    """{zero_shot/<task>/<metric>: value, .../n: documents scored} of one task (add_bos: the tokenizer's)."""
    spec = TASKS[name]
    docs, per_doc, left_out = score_task(scorer, self._tokenizer, spec, self._documents(name), self._max_length,
                                         None)
    if not docs:
      raise ValueError(f"no document could be scored, e.g. {left_out[0]}")
    values = aggregate(spec, docs, per_doc)
    out = {f"{PREFIX}/{name}/{key.split(',')[0]}": v for key, v in values.items() if isinstance(v, (int, float))}
    return {**out, f"{PREFIX}/{name}/n": len(docs)}

  def _summary(self, record: dict[str, Any]) -> str:
    """'arc_easy acc 0.250 acc_norm 0.300, piqa not scored' in task order."""
    parts = []
    for name in self.names:
      prefix = f"{PREFIX}/{name}/"
      metrics = [f"{m} {record[prefix + m]:.4g}" for m in TASKS[name].metrics if prefix + m in record]
      parts.append(f"{name} {' '.join(metrics)}" if metrics else f"{name} not scored")
    return ", ".join(parts)
