"""Zero-shot tasks during training (config.train.zero_shot_*): the fields checked at start, the scores in
metrics.jsonl equal to the evaluation's own (run_eval) on the same parameters, and a task that cannot be scored
is a warning and a count while the run goes on."""

import json
from pathlib import Path

import pytest

from configs import base
from ssa_jax.errors import ConfigError
from ssa_jax.evaluate import run_eval
from ssa_jax.formats import checkpoint
from ssa_jax.train import zero_shot
from ssa_jax.train.loop import train
from ssa_jax.train.sections import train_section
from train_configs import tiny_run_config


@pytest.mark.parametrize("fields, message", [
    (dict(zero_shot_every=10, zero_shot_tasks="piqa,arc_eassy"),
     r"config\.train\.zero_shot_tasks: unknown task\(s\) arc_eassy; known: arc_challenge, arc_easy, hellaswag"),
    (dict(zero_shot_every=0, zero_shot_tasks="passkey"), r"config\.train\.zero_shot_tasks: unknown task\(s\) passkey"),
    (dict(zero_shot_every=10, zero_shot_tasks=" , "), r"config\.train\.zero_shot_tasks: required when "
                                                      r"config\.train\.zero_shot_every=10"),
    (dict(zero_shot_limit=-1), r"config\.train\.zero_shot_limit: expected an int >= 0"),
    (dict(checkpoint_every_minutes=-0.5), r"config\.train\.checkpoint_every_minutes: expected a number >= 0"),
])
def test_bad_zero_shot_and_time_checkpoint_fields_are_config_errors(fields, message):
  config = base.get_config("tiny", "ssa", mode="demo")
  config.train.update(fields)
  with pytest.raises(ConfigError, match=message):
    train_section(config.train)


def test_the_defaults_are_off():
  t = train_section(base.get_config("tiny", "ssa", mode="pretrain").train)
  assert (t.zero_shot_every, t.zero_shot_task_names, t.checkpoint_every_minutes) == (0, [], 0.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  from ssa_jax.data import demo

  cache = tmp_path_factory.mktemp("cache")
  return demo.ensure_demo_corpus(str(cache)), demo.ensure_demo_tokenizer(str(cache), 512)


def _config(corpus, data_dir, tasks: str, limit: int):
  config = tiny_run_config(corpus[0], corpus[1], steps=4, checkpoint_every=0, zero_shot_every=2,
                           zero_shot_tasks=tasks, zero_shot_limit=limit)
  config.model.vocab_size = 512
  config.mesh.num_devices = 1  # the quickest compile
  config.eval.data_dir = str(data_dir)
  config.eval.batch_size = 4
  return config


def _zero_shot_records(workdir: Path) -> dict[int, dict]:
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r for r in lines if "zero_shot/errors" in r}


def test_zero_shot_scores_equal_the_evaluations_on_the_same_parameters(corpus, shared_data, tmp_path, capsys):
  """Steps 2 and 4 scored on the first 5 documents of two benchmark files; step 4's scores are those of
  run_eval (eval.py's scorer, lm-eval's semantics) on the final checkpoint with --limit=5."""
  benchmarks, workdir = shared_data / "benchmarks", tmp_path / "run"
  config = _config(corpus, benchmarks, "arc_easy,lambada_openai", limit=5)
  train(config, str(workdir))
  records = _zero_shot_records(workdir)
  assert sorted(records) == [2, 4]
  err = capsys.readouterr().err
  assert err.count("zero-shot arc_easy acc ") == 2 and "not scored" not in err, err

  model, variables, _ = checkpoint.load_model(workdir / "checkpoints")
  want = run_eval(model, variables, corpus[1], tasks="arc_easy,lambada_openai", data_dir=str(benchmarks), limit=5,
                  batch_size=4, max_length=config.train.seq_len, show_progress=False)["results"]
  got = records[4]
  assert got["zero_shot/errors"] == 0
  for task, metrics in (("arc_easy", ("acc", "acc_norm")), ("lambada_openai", ("perplexity", "acc"))):
    assert got[f"zero_shot/{task}/n"] == want[task]["sample_len"] > 0
    for m in metrics:
      assert got[f"zero_shot/{task}/{m}"] == pytest.approx(want[task][f"{m},none"], rel=1e-6), (task, m)
  assert records[2]["zero_shot/lambada_openai/perplexity"] != got["zero_shot/lambada_openai/perplexity"]


def _write_arc(path: Path, n: int) -> None:
  record = {"question": "Which is a color?", "choices": {"text": ["red", "dog"], "label": ["A", "B"]},
            "answerKey": "A"}
  path.write_text("".join(json.dumps(record) + "\n" for _ in range(n)))


def test_a_task_that_cannot_be_scored_is_a_warning_and_a_count_and_the_run_goes_on(corpus, tmp_path, monkeypatch,
                                                                                  capsys):
  """piqa's file is missing and scoring arc_challenge raises; arc_easy is scored at both passes all the same."""
  data_dir = tmp_path / "tasks"
  data_dir.mkdir()
  _write_arc(data_dir / "arc_easy_test.jsonl", 3)
  _write_arc(data_dir / "arc_challenge_test.jsonl", 3)
  score_task = zero_shot.score_task

  def failing_score_task(scorer, tokenizer, spec, *args):
    if spec.name == "arc_challenge":
      raise RuntimeError("scoring broke")
    return score_task(scorer, tokenizer, spec, *args)

  monkeypatch.setattr(zero_shot, "score_task", failing_score_task)
  workdir = tmp_path / "run"
  summary = train(_config(corpus, data_dir, "arc_easy,piqa,arc_challenge", limit=0), str(workdir))
  assert summary["step"] == 4 and not summary["stopped"]
  records = _zero_shot_records(workdir)
  assert sorted(records) == [2, 4]
  for r in records.values():
    assert r["zero_shot/errors"] == 2 and r["zero_shot/arc_easy/n"] == 3 and 0 <= r["zero_shot/arc_easy/acc"] <= 1
    assert not any(k.startswith(("zero_shot/piqa/", "zero_shot/arc_challenge/")) for k in r), r
  err = capsys.readouterr().err
  piqa = [l for l in err.splitlines() if "zero-shot task piqa not scored" in l]
  assert len(piqa) == 2 and "piqa_validation.jsonl" in piqa[0] and "config.eval.data_dir" in piqa[0], err
  assert err.count("zero-shot task arc_challenge not scored: RuntimeError: scoring broke") == 2, err
  assert "warning: config.train.zero_shot_tasks: task piqa" in err  # said at start too
