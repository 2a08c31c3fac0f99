"""Evaluates the final parameters of a run into WORKDIR/results.json (lm-eval layout, see ssa_jax.evaluate):
config.eval's tasks, the held-out perplexity and passkey retrieval, then what each number measures, in words."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from etils import epath

from ssa_jax.data.sources import list_files
from ssa_jax.data.tokenizer import Tokenizer
from ssa_jax.evaluate import results as results_lib
from ssa_jax.evaluate import run_eval
from ssa_jax.evaluate.config import eval_config
from ssa_jax.evaluate.passkey import make_trials
from ssa_jax.model.decoder import Decoder
from ssa_jax.train.context import RunContext
from ssa_jax.train.evaluation import EvalStep, local_variables, split_loss
from ssa_jax.train.metrics import log, perplexity

HELDOUT = "heldout"  # the results entry of the held-out perplexity


def passkey_lengths(seq_len: int, pk: ml_collections.ConfigDict, tokenizer: Tokenizer) -> tuple[int, ...]:
  """Prompt lengths whose prompt plus generated tokens fit the training window: a quarter, a half and all of
  `seq_len`, less max_new_tokens, keeping those that hold at least the prompt without filler."""
  keep = []
  for length in sorted({seq_len * k // 4 - int(pk.max_new_tokens) for k in (1, 2, 4)}):
    if length <= 0:
      continue
    probe = ml_collections.ConfigDict(pk.to_dict())
    probe.lengths, probe.trials = (length,), 1
    if len(tokenizer.encode(make_trials(probe, tokenizer)[0].prompt)) <= length:
      keep.append(length)
  return tuple(keep)


def _heldout_split_is_separate(ctx: RunContext, split: str) -> str | None:
  """None when `split` has files of its own; else why its perplexity would not be held out."""
  data = ctx.data
  try:
    heldout = set(list_files(data.path, split, data.format))
  except FileNotFoundError as e:
    return str(e)
  if heldout & set(list_files(data.path, data.train_split, data.format)):
    return f"the {split!r} files of {data.path} are also training files"
  return None


def heldout_perplexity(ctx: RunContext, eval_step: EvalStep, variables: dict) -> dict[str, Any] | None:
  """{"split", "loss", "perplexity", "tokens", "windows"} over the whole held-out split; None when there is
  none (config.eval.heldout_split '' or a corpus without a separate split: the console says which)."""
  split = ctx.eval.heldout_split
  if not split:
    return None
  why_not = _heldout_split_is_separate(ctx, split)
  if why_not:
    log(f"held-out perplexity: not measured ({why_not})")
    return None
  loss, batches = split_loss(ctx, eval_step, variables, split)
  if loss is None:
    log(f"held-out perplexity: not measured (the {split!r} split holds less than one batch)")
    return None
  return {"split": split, "loss": loss, "perplexity": perplexity(loss), "tokens": batches * ctx.train.tokens_per_step,
          "windows": batches * ctx.train.global_batch_size, "data_path": str(ctx.data.path)}


def _add_heldout(out: dict[str, Any], heldout: dict[str, Any]) -> None:
  """Puts the held-out perplexity first among the results, with lm-eval's bookkeeping fields."""
  entry = results_lib.task_entry(HELDOUT, heldout["windows"],
                                 {"perplexity,none": heldout["perplexity"], "loss,none": heldout["loss"]})
  out["results"] = {HELDOUT: entry, **out["results"]}
  out.setdefault("configs", {})[HELDOUT] = {
      "task": HELDOUT, "data_file": heldout["data_path"], "test_split": heldout["split"],
      "output_type": "loglikelihood_rolling", "num_fewshot": 0,
      "description": "exp(mean next-token loss) over the whole held-out split, in windows of train.seq_len"}
  for key, value in (("versions", 1.0), ("n-shot", 0), ("higher_is_better", {"perplexity": False, "loss": False}),
                     ("n-samples", {"original": heldout["windows"], "effective": heldout["windows"]})):
    out.setdefault(key, {})[HELDOUT] = value


def explain(out: dict[str, Any], ctx: RunContext) -> list[str]:
  """One sentence per number of the results, in words (printed after the table, stored in results.json)."""
  t, lines = ctx.train, []
  vocab = ctx.model_cfg.vocab_size
  own = out.get("ssa_jax", {})
  h = own.get("heldout")
  if h:
    lines.append(
        f"held-out perplexity {h['perplexity']:.2f}: exp of the mean next-token loss ({h['loss']:.4f} nats) on "
        f"the {h['split']!r} split of {h['data_path']}, never trained on, {h['tokens']:,} tokens in windows of "
        f"{t.seq_len}; lower is better, guessing uniformly over the {vocab:,}-token vocabulary scores {vocab:,}.")
  val = own.get("validation") or {}
  if val.get("val_ppl") is not None:
    lines.append(
        f"validation perplexity {val['val_ppl']:.2f}: the same measure on the first {t.eval_batches} batches "
        f"of the {ctx.data.validation_split!r} split, the figure logged during training.")
  pk = out.get("passkey")
  if pk is not None and "passkey" in out["results"]:
    acc = out["results"]["passkey"].get("acc,none")
    trials = pk.get("trials", [])
    hits = sum(1 for r in trials if r.get("correct"))
    sizes = [r["prompt_tokens"] for r in trials]
    span = f"{min(sizes)}-{max(sizes)}" if sizes and min(sizes) != max(sizes) else str(sizes[0] if sizes else 0)
    acc_text = "not run" if acc is None else f"{acc:.2f} ({hits} of {len(trials)} keys)"
    example = next((r["output"] for r in trials if not r.get("correct")), None)
    lines.append(
        f"passkey accuracy {acc_text}: after an instruction, a sentence stating a {pk['config']['digits']}-digit "
        f"key and as much filler text as the length leaves room for, greedy decoding must answer the key; "
        f"prompts of {span} tokens, inside the {t.seq_len}-token training window (the paper's Table 4 test)."
        + (f" A wrong answer, e.g.: {example.strip()!r}." if example is not None else "")
        + (" A model this small and this briefly trained is not expected to retrieve keys: in the demo the "
           "figure shows that the evaluation runs end to end." if ctx.config.get("mode") == "demo" else ""))
  for task, message in (own.get("missing_tasks") or {}).items():
    lines.append(f"{task}: not run ({message}).")
  return lines


def evaluate_at_end(ctx: RunContext, model: Decoder, variables: dict, summary: dict[str, Any],
                    eval_step: EvalStep) -> epath.Path:
  """Runs config.eval's tasks (and passkey when config.eval.passkey) on `variables`, adds the held-out
  perplexity; writes and returns the results path."""
  ev, seq_len = ctx.eval, ctx.train.seq_len
  tasks = ev.task_names
  passkey = None
  if ev.passkey:
    passkey = eval_config().passkey
    passkey.lengths = passkey_lengths(seq_len, passkey, ctx.tokenizer)
    if passkey.lengths:
      tasks.append("passkey")
    else:
      log(f"passkey: not run (its shortest prompt does not fit train.seq_len={seq_len} with "
          f"{passkey.max_new_tokens} generated tokens)")
  heldout = heldout_perplexity(ctx, eval_step, variables)
  output = ctx.workdir / "results.json"
  # The scorer runs on each process's own devices, every process alike: with several processes the parameters
  # are made local first (a global array cannot be placed on one process's devices).
  out = run_eval(
      model, local_variables(variables), ctx.tokenizer, tasks=tasks, data_dir=ev.data_dir or None,
      limit=ev.limit or None, batch_size=ev.batch_size, max_length=seq_len, output=None, passkey=passkey,
      extra={
          "checkpoint": str(ctx.workdir / "checkpoints"),
          "step": summary["step"],
          "validation": {k: summary.get(k) for k in ("val_loss", "val_ppl")},
          "heldout": heldout,
      },
  )
  if heldout:
    _add_heldout(out, heldout)
  lines = explain(out, ctx)
  out["ssa_jax"]["explained"] = lines
  if jax.process_index() == 0:
    results_lib.write(out, str(output))
    print("\nWhat the numbers mean:\n" + "\n".join(f"- {line}" for line in lines), flush=True)
    print(f"results -> {output}", flush=True)
  return output
