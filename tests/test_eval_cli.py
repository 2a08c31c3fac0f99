"""eval.py and `python -m ssa_jax.formats.hf export` as a user meets them: early one-line errors, exit codes, the
default results file, and an export that evaluates without --tokenizer."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# Words that train a byte-level BPE with plenty of merges (a random alphabet soup would give too few pairs).
_WORDS = ("the grass is green the sky is blue the sun is yellow here we go there and back again the pass key is "
          "remember it what is important info hidden inside a lot of irrelevant text find memorize quiz").split()


def _texts(n: int, seed: int, alphabet: bool = False) -> list[str]:
  rng = np.random.default_rng(seed)
  if alphabet:  # many distinct short words: enough pairs for a 400-token BPE
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return [" ".join("".join(rng.choice(letters, 4)) for _ in range(30)) for _ in range(n)]
  return [" ".join(rng.choice(_WORDS, 40)) + f" {int(rng.integers(10000, 99999))}." for _ in range(n)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """A tiny Llama saved as a training workdir whose run config names its tokenizer, plus task files, a
  tokenizer too large for the model, and an HF directory with config + tokenizer but no weights."""
  import jax

  from tiny_models import tiny_config
  from ssa_jax.formats import checkpoint
  from ssa_jax.data.demo import train_bpe
  from ssa_jax.formats.hf import config_to_hf
  from ssa_jax.model.params import init_variables

  root = tmp_path_factory.mktemp("eval_cli")
  tokenizer = root / "tok" / "tokenizer.json"
  tokenizer.parent.mkdir()
  tokenizer.write_text(train_bpe(_texts(300, 0), 300))
  big = root / "big_tok" / "tokenizer.json"
  big.parent.mkdir()
  big.write_text(train_bpe(_texts(300, 1, alphabet=True), 400))
  cfg = dataclasses.replace(tiny_config("llama", max_seq_len=128), vocab_size=300).validate()
  workdir = root / "run"
  checkpoint.save_model(workdir / "checkpoints", cfg, init_variables(cfg, jax.random.PRNGKey(0)), step=5,
                        run_config={"data": {"tokenizer_path": str(tokenizer)}})
  data = root / "data"
  data.mkdir()
  (data / "lambada_openai_test.jsonl").write_text(
      "".join(json.dumps({"text": t}) + "\n" for t in _texts(3, 2)))
  weightless = root / "weightless"
  weightless.mkdir()
  (weightless / "config.json").write_text(json.dumps(config_to_hf(cfg)))
  (weightless / "tokenizer.json").write_bytes(tokenizer.read_bytes())
  return types.SimpleNamespace(root=root, tokenizer=tokenizer, big=big, cfg=cfg, workdir=workdir, data=data,
                               weightless=weightless)


def _eval(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "eval.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)


def test_tokenizer_sizes_of_the_fixture(world):
  from ssa_jax.data.tokenizer import load_tokenizer

  assert 270 < load_tokenizer(str(world.tokenizer)).vocab_size <= 300 < load_tokenizer(str(world.big)).vocab_size


@pytest.mark.parametrize("args, message", [
    ([], "error: give exactly one model source: --hf_dir=DIR or --checkpoint="),
    (["--tasks=piqa,nope"], "error: unknown task(s) ['nope']"),
    (["--tokenizer={big}"], "tokens but the model's vocabulary has only 300"),
    (["--limt=3"], "error: Unknown command line flag 'limt'"),
])
def test_bad_request_fails_with_one_line_before_the_model_loads(world, args, message):
  """`weightless` has no model.safetensors: an error about anything else proves the model was never loaded."""
  source = [] if not args else [f"--hf_dir={world.weightless}"]
  r = _eval(*source, f"--data_dir={world.data}", "--tasks=lambada_openai",
            *[a.format(big=world.big) for a in args])
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ") and message in r.stderr
  assert r.stdout == ""


def test_good_request_on_the_weightless_dir_reaches_the_model_load(world):
  """The control of the test above: with nothing wrong in the request, the missing weights are what stops it."""
  r = _eval(f"--hf_dir={world.weightless}", f"--data_dir={world.data}", "--tasks=lambada_openai")
  assert r.returncode == 2 and "no model.safetensors" in r.stderr and r.stderr.count("\n") == 1


def test_verbosity_1_shows_the_traceback(world):
  r = _eval(f"--hf_dir={world.weightless}", "--tasks=nope", "--verbosity=1")
  assert r.returncode != 0 and "Traceback" in r.stderr and "unknown task(s) ['nope']" in r.stderr


@pytest.mark.parametrize("overrides, message", [
    (dict(tasks=" , "), "--tasks: no task named"),
    (dict(limit=-1), "--limit: expected an int >= 0, got -1"),
    (dict(data_dir="/no/such/dir"), "--data_dir: /no/such/dir is not a directory"),
    (dict(data_dir="{empty}"), "holds none of the files of the tasks asked for (expected lambada_openai_test.jsonl"),
    (dict(data_dir=""), "--data_dir: required for lambada_openai"),
    (dict(tasks="passkey", passkey_lengths="64,x"), "--passkey_lengths: expected comma-separated positive ints"),
    (dict(batch_size=0), "--batch_size: expected an int >= 1"),
    (dict(dtype="float8"), "--dtype:"),
])
def test_plan_rejects_each_bad_request(world, tmp_path, overrides, message):
  from ssa_jax.evaluate.cli import plan_eval

  request = dict(hf_dir=str(world.weightless), tasks="lambada_openai", data_dir=str(world.data),
                 passkey_lengths="64")
  request.update({k: v.format(empty=tmp_path) if isinstance(v, str) else v for k, v in overrides.items()})
  with pytest.raises(ValueError, match=None) as e:
    plan_eval(**request)
  assert message in str(e.value)


def test_a_directory_of_the_other_kind_is_named_with_the_flag_that_reads_it(world, tmp_path):
  """--hf_dir=<a training workdir> (before: 'architecture None is not supported') and the reverse."""
  from ssa_jax.evaluate.cli import plan_eval

  only_config = tmp_path / "run"  # a workdir of a run stopped before its first checkpoint
  only_config.mkdir()
  (only_config / "config.json").write_text(json.dumps({"model": dataclasses.asdict(world.cfg), "train": {},
                                                       "data": {}}))
  for workdir in (world.workdir, only_config):
    with pytest.raises(ValueError) as e:
      plan_eval(hf_dir=str(workdir), tasks="passkey")
    assert str(e.value).startswith(f"--hf_dir: {workdir} is an ssa-jax training workdir")
    assert str(e.value).endswith(f"pass --checkpoint={workdir}")
  with pytest.raises(ValueError, match=f"--checkpoint: .* Hugging Face directory .* pass --hf_dir={world.weightless}"):
    plan_eval(checkpoint=str(world.weightless), tasks="passkey")


def test_plan_keeps_going_with_some_task_files_missing(world):
  from ssa_jax.evaluate.cli import plan_eval

  plan = plan_eval(hf_dir=str(world.weightless), tasks="lambada_openai,piqa", data_dir=str(world.data))
  assert plan.names == ["lambada_openai", "piqa"] and "piqa_validation.jsonl" in plan.missing["piqa"]
  assert plan.tokenizer_path == str(world.weightless / "tokenizer.json") and plan.max_length == 128
  assert plan.output == str(world.weightless / "eval_results.json") and plan.output_is_default


def test_the_default_window_is_the_checkpoints_training_window_and_is_named(world, tmp_path):
  """A model of 128 positions trained on windows of 32 (its run config's train.seq_len) is scored on windows of 32
  by default; --max_length wins; a source that records no training window uses the model's 128."""
  import jax

  from ssa_jax.evaluate.cli import plan_eval
  from ssa_jax.formats import checkpoint
  from ssa_jax.model.params import init_variables

  run = tmp_path / "run32"
  checkpoint.save_model(run / "checkpoints", world.cfg, init_variables(world.cfg, jax.random.PRNGKey(0)), step=1,
                        run_config={"data": {"tokenizer_path": str(world.tokenizer)}, "train": {"seq_len": 32}})
  request = dict(tasks="lambada_openai", data_dir=str(world.data))
  plan = plan_eval(checkpoint=str(run), **request)
  assert plan.max_length == 32
  assert plan.window_note.startswith("window: 32 tokens, the run's training window (config.train.seq_len; "
                                     "the model has 128 positions"), plan.window_note
  plan = plan_eval(checkpoint=str(run), max_length=64, **request)
  assert (plan.max_length, plan.window_note) == (64, "window: 64 tokens (--max_length)")
  for source in (dict(checkpoint=str(world.workdir)), dict(hf_dir=str(world.weightless))):  # none recorded
    plan = plan_eval(**source, **request)
    assert plan.max_length == 128 and plan.window_note.startswith("window: 128 tokens, the model's max_seq_len")


def test_default_output_lies_beside_the_model(world, tmp_path):
  from ssa_jax.formats import checkpoint
  from ssa_jax.evaluate.loading import ModelSource, default_output

  ckpt = world.workdir / "checkpoints"
  assert default_output(ModelSource(checkpoint=str(world.workdir))) == str(world.workdir / "eval_results_step5.json")
  assert default_output(ModelSource(checkpoint=str(ckpt / "5"))) == str(world.workdir / "eval_results_step5.json")
  import jax

  from ssa_jax.model.params import init_variables

  bare = tmp_path / "imported"
  checkpoint.save_model(bare, world.cfg, init_variables(world.cfg, jax.random.PRNGKey(1)), step=0)
  out = default_output(ModelSource(checkpoint=str(bare)))
  assert out == str(bare / "eval_results_step0.json")
  Path(out).write_text("{}")  # a results file inside a checkpoint root leaves it loadable
  assert checkpoint.resolve_step_dir(bare) == (bare, 0)
  assert checkpoint.load_model(bare)[0].config == world.cfg


def test_export_carries_the_tokenizer_and_evaluates_like_the_checkpoint(world):
  """Checkpoint -> export (tokenizer included) -> eval.py --hf_dir without --tokenizer: the same numbers as
  eval.py --checkpoint, each written to its default results file, which the console names."""
  from ssa_jax.formats import hf

  export = world.root / "export"
  assert hf.main(["export", str(world.workdir), str(export)]) == 0
  assert (export / "tokenizer.json").read_bytes() == world.tokenizer.read_bytes()

  common = (f"--data_dir={world.data}", "--tasks=lambada_openai", "--batch_size=4")
  from_export = _eval(f"--hf_dir={export}", *common)
  assert from_export.returncode == 0, from_export.stderr
  assert f"results -> {export / 'eval_results.json'}" in from_export.stdout
  from_ckpt = _eval(f"--checkpoint={world.workdir}", *common)
  assert from_ckpt.returncode == 0, from_ckpt.stderr
  assert f"results -> {world.workdir / 'eval_results_step5.json'}" in from_ckpt.stdout
  assert "[eval] window: 128 tokens, the model's max_seq_len" in from_ckpt.stdout  # no training window recorded

  a = json.loads((export / "eval_results.json").read_text())
  b = json.loads((world.workdir / "eval_results_step5.json").read_text())
  assert a["ssa_jax"]["tokenizer"] == str(export / "tokenizer.json")
  assert b["ssa_jax"]["tokenizer"] == str(world.tokenizer) and b["ssa_jax"]["step"] == 5
  for key in ("perplexity,none", "acc,none"):
    assert a["results"]["lambada_openai"][key] == pytest.approx(b["results"]["lambada_openai"][key], rel=1e-5)


def test_no_task_ran_exits_nonzero_and_says_why(world, tmp_path):
  (tmp_path / "lambada_openai_test.jsonl").write_text("{not json\n" + json.dumps({"other": 1}) + "\n")
  r = _eval(f"--checkpoint={world.workdir}", f"--data_dir={tmp_path}", "--tasks=lambada_openai",
            f"--output={tmp_path / 'r.json'}")
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1].startswith("error: no task ran: task lambada_openai: ")
  assert "holds no valid documents" in r.stderr
  written = json.loads((tmp_path / "r.json").read_text())
  assert written["results"] == {} and "lambada_openai" in written["ssa_jax"]["missing_tasks"]


def test_hf_cli_mistakes_are_one_line(world, tmp_path, capsys):
  from ssa_jax.formats import checkpoint, hf
  from ssa_jax.evaluate.cli import plan_eval

  assert hf.main(["export", str(world.workdir)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and "required: hf_dir" in err
  assert hf.main(["export", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
  assert "does not exist" in capsys.readouterr().err
  assert hf.main(["export", str(world.workdir), str(tmp_path / "out"), f"--tokenizer={world.big}"]) == 2
  assert "vocabulary has only 300" in capsys.readouterr().err

  # A checkpoint whose run config names no tokenizer: the export says so, and eval asks for one in one line.
  nameless = tmp_path / "nameless"
  model, params, _ = checkpoint.load_model(world.workdir)
  checkpoint.save_model(nameless, model.config, params)
  assert hf.main(["export", str(nameless), str(tmp_path / "bare_export")]) == 0
  assert "names no tokenizer" in capsys.readouterr().err
  with pytest.raises(ValueError, match="holds no tokenizer.json or tokenizer.model: pass --tokenizer=PATH"):
    plan_eval(hf_dir=str(tmp_path / "bare_export"), tasks="lambada_openai", data_dir=str(world.data))
  # --tokenizer on export names the file to ship.
  assert hf.main(["export", str(nameless), str(tmp_path / "named"), f"--tokenizer={world.tokenizer.parent}"]) == 0
  assert (tmp_path / "named" / "tokenizer.json").read_bytes() == world.tokenizer.read_bytes()
  # Import records the HF directory's tokenizer, so eval.py --checkpoint on the import needs no --tokenizer.
  assert hf.main(["import", str(tmp_path / "named"), str(tmp_path / "imported")]) == 0
  plan = plan_eval(checkpoint=str(tmp_path / "imported"), tasks="lambada_openai", data_dir=str(world.data))
  assert plan.tokenizer_path == str((tmp_path / "named" / "tokenizer.json").absolute())
