"""The training system end to end (interrupted runs: test_train_interrupts.py): a run of 8 devices resumed on one
with the same losses, the end-of-run held-out and validation losses against numpy, non-finite steps, the demo
command, config errors before any compile, a workdir of another config refused, a complete run left alone, an
empty validation split, and a stop after the step under way."""

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import tiny_ssa
from ssa_jax.errors import ConfigError
from ssa_jax.formats import checkpoint
from ssa_jax.train import preflight
from ssa_jax.train.loop import train
from ssa_jax.train.preflight import prepare
from split_loss_reference import checkpoint_loss, windows
from train_runs import (REPO, demo_corpus, demo_run_config, run_cli_args, run_final_params, run_losses,
                        run_python)

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return demo_corpus(tmp_path_factory)


def _assert_results_equal_a_numpy_reference(config, workdir) -> None:
  """results.json's held-out loss and perplexity and its validation loss equal a numpy log-softmax over the
  checkpoint's logits on the same windows (tests/split_loss_reference.py).

  Measured agreement: 4e-8 relative (float32 sums on the mesh against float64 on one device); 1e-6 leaves room
  for other reduction orders and still sees one skipped batch or a loss off by 1e-4 nats."""
  results = json.loads((Path(workdir) / "results.json").read_text())
  heldout, t = results["ssa_jax"]["heldout"], config.train
  test_NT1 = windows(config, "test")
  assert heldout["windows"] == len(test_NT1) and heldout["tokens"] == len(test_NT1) * t.seq_len, heldout
  want = checkpoint_loss(workdir, test_NT1)
  assert heldout["loss"] == pytest.approx(want, rel=1e-6, abs=0), (heldout["loss"], want)
  entry = results["results"]["heldout"]
  assert entry["loss,none"] == pytest.approx(want, rel=1e-6, abs=0)
  assert entry["perplexity,none"] == pytest.approx(np.exp(want), rel=1e-5, abs=0)
  assert entry["sample_len"] == len(test_NT1)
  val_NT1 = windows(config, "validation", max_batches=t.eval_batches)
  assert len(val_NT1) == t.eval_batches * t.global_batch_size
  val = results["ssa_jax"]["validation"]
  want_val = checkpoint_loss(workdir, val_NT1)
  assert val["val_loss"] == pytest.approx(want_val, rel=1e-6, abs=0), (val["val_loss"], want_val)
  assert val["val_ppl"] == pytest.approx(np.exp(want_val), rel=1e-5, abs=0)


def _config_8_devices(corpus, **train_fields):
  """8 steps on a data x fsdp x tensor mesh of 8 devices; warmup to step 6, then a constant rate (a run of 4
  steps and one of 8 share their first learning rates, where cosine would decay each to its own end)."""
  config = demo_run_config(corpus, steps=8, checkpoint_every=4, schedule="constant", warmup_steps=6, **train_fields)
  config.mesh.update(dict(data=2, fsdp=2, tensor=2))
  return config


@pytest.fixture(scope="module")
def straight_8(corpus, tmp_path_factory):
  """(config, workdir) of an uninterrupted 8-device run, evaluated at its end (held-out and validation)."""
  config = _config_8_devices(corpus)
  config.eval.at_end = True
  workdir = tmp_path_factory.mktemp("straight_8") / "run"
  train(config, str(workdir))
  return config, workdir


@needs_8
def test_heldout_and_validation_losses_equal_a_numpy_log_softmax_over_the_same_windows(straight_8):
  """The end-of-run evaluation on the 8-device mesh against the checkpoint's logits on one device and a
  float64 log-softmax: the same loss over the whole 'test' split and the first eval_batches batches of
  'validation'."""
  _assert_results_equal_a_numpy_reference(*straight_8)


@needs_8
def test_a_run_of_8_devices_resumed_on_one_continues_with_the_samerun_losses(corpus, straight_8, tmp_path,
                                                                          monkeypatch):
  """Steps 1-4 on 8 devices, steps 5-8 resumed on one device: the losses of the uninterrupted 8-device run,
  step by step. Steps 5-6 are still in warmup (the schedule must continue from the global step), and Adam's
  moments shape every update after the resume."""
  saved = {}  # step -> the 8-device run's parameters as it saved them, gathered to the host
  save = checkpoint.save_train_state

  def recording_save(mngr, state, *args, **kwargs):
    saved[kwargs["step"]] = traverse_util.flatten_dict(jax.device_get(state.params))
    return save(mngr, state, *args, **kwargs)

  monkeypatch.setattr(checkpoint, "save_train_state", recording_save)
  config = _config_8_devices(corpus)
  config.train.steps = 4
  train(config, str(tmp_path / "run"))
  assert list(saved) == [4]
  # Evaluation-style restore onto one CPU device: the same values.
  _, variables, _ = checkpoint.load_model(tmp_path / "run")
  assert all(len(x.sharding.device_set) == 1 for x in jax.tree_util.tree_leaves(variables))
  restored = traverse_util.flatten_dict(jax.device_get(variables["params"]))
  assert restored.keys() == saved[4].keys()
  for k in restored:
    np.testing.assert_array_equal(restored[k], saved[4][k], err_msg="/".join(k))

  # Training resumes on a single device from the 8-device checkpoint.
  config.mesh.update(dict(data=-1, fsdp=1, tensor=1, num_devices=1))
  config.train.steps = 8
  assert train(config, str(tmp_path / "run"))["step"] == 8
  straight, resumed = run_losses(straight_8[1]), run_losses(tmp_path / "run")
  assert sorted(straight) == sorted(resumed) == list(range(1, 9))
  assert [resumed[s] for s in range(1, 5)] == [straight[s] for s in range(1, 5)]  # the same 8-device steps
  # Steps 5-8 differ from the 8-device run's only by the order of float32 sums (tensor-parallel matmuls, the
  # data-parallel gradient mean): measured 1.5e-7 relative at most, the same as between uninterrupted 8- and
  # 1-device runs; an optimizer state reset on resume moves steps 6-8 by 7e-3 to 2e-2.
  np.testing.assert_allclose([resumed[s] for s in range(5, 9)], [straight[s] for s in range(5, 9)], rtol=1e-5,
                             atol=0)


def test_nonfinite_steps_stop_the_run_with_a_good_checkpoint(corpus, tmp_path):
  config = demo_run_config(corpus, steps=50, lr=1e38, warmup_steps=0, grad_clip=0.0, max_nonfinite_steps=2,
                   checkpoint_every=0)
  with pytest.raises(FloatingPointError, match="non-finite"):
    train(config, str(tmp_path / "run"))
  params = run_final_params(tmp_path / "run")
  assert all(np.all(np.isfinite(v)) for v in params.values())


def test_demo_command_trains_and_writes_results(tmp_path):
  workdir = tmp_path / "demo"
  proc = run_python([str(REPO / "train.py"), f"--config={REPO}/configs/tiny_ssa.py", f"--workdir={workdir}",
               "--config.train.steps=60", "--config.train.eval_every=0", "--config.train.log_every=10",
               f"--config.data.cache_dir={tmp_path / 'cache'}"])
  losses = run_losses(workdir)
  assert losses[60] < losses[10] - 0.5, losses
  assert checkpoint.resolve_step_dir(workdir)[1] == 60
  results = json.loads((workdir / "results.json").read_text())
  # The held-out and validation figures: those of the checkpoint on the same windows, computed here.
  assert results["ssa_jax"]["heldout"]["split"] == "test"
  config = tiny_ssa.get_config()
  config.data.cache_dir = str(tmp_path / "cache")
  _assert_results_equal_a_numpy_reference(config, workdir)
  # Passkey prompts plus the generated tokens fit the 128-token training window.
  trials = results["passkey"]["trials"]
  assert trials and all(t["prompt_tokens"] + results["passkey"]["config"]["max_new_tokens"] <= 128 for t in trials)
  # The console and results.json say what each number is.
  explained = results["ssa_jax"]["explained"]
  assert [line.split(" ")[0] for line in explained] == ["held-out", "validation", "passkey"], explained
  assert "What the numbers mean:" in proc.stdout and explained[0] in proc.stdout


@pytest.mark.slow
def test_full_demo_learns_and_evaluates(tmp_path):
  """The README's main command as it is (600 steps, then evaluation): about 3 minutes on a 2-core CPU."""
  workdir = tmp_path / "demo"
  run_python([str(REPO / "train.py"), f"--config={REPO}/configs/tiny_ssa.py", f"--workdir={workdir}",
        f"--config.data.cache_dir={tmp_path / 'cache'}"])
  losses = run_losses(workdir)
  assert max(losses) == 600 and losses[600] < losses[20] - 1.5, losses
  val = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if "val_ppl" in l]
  assert val and val[-1]["val_ppl"] < 80, val
  results = json.loads((workdir / "results.json").read_text())
  assert results["ssa_jax"]["step"] == 600
  assert results["ssa_jax"]["validation"]["val_ppl"] == pytest.approx(val[-1]["val_ppl"], rel=1e-6)
  assert results["results"]["passkey"]["acc,none"] is not None


@pytest.mark.parametrize("field,value,message", [
    ("data.path", "/nonexistent/slimpajama", "config.data.path"),
    ("model.ssa.token_kind", "cubic", "config.model.ssa.token_kind"),
    ("model.ssa.token_kind", "frequency", "config.model.ssa.feature_path"),
    ("model.ssa.feature_path", "/nonexistent/counts.npy", "config.model.ssa.feature_path"),
    ("mode", "finetune", "config.init.hf_dir"),
    ("mesh.data", 3, "config.mesh"),
    ("train.global_batch_size", 12, "config.train.global_batch_size"),
    ("train.seq_len", 4096, "config.train.seq_len"),
])
def test_bad_config_fails_before_compiling(corpus, tmp_path, field, value, message):
  config = demo_run_config(corpus)
  config.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  if field == "model.ssa.feature_path":
    config.model.ssa.token_kind = "frequency"
  *parents, last = field.split(".")
  target = config
  for part in parents:
    target = target[part]
  target[last] = value
  if field == "train.global_batch_size" and jax.device_count() < 8:
    pytest.skip("needs 8 devices for a batch of 12 not to divide")
  with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
    prepare(config, str(tmp_path / "run"))


def test_frequency_token_term_without_feature_path_fails_even_from_hf(corpus, tmp_path):
  """An HF checkpoint carries no token feature: with init.hf_dir the frequency term would still be dead."""
  config = demo_run_config(corpus)
  config.mode = "finetune"
  config.init.hf_dir = str(tmp_path)  # exists; never read, the check comes first
  config.model.ssa.token_kind = "frequency"
  with pytest.raises(ConfigError, match=r"config\.model\.ssa\.feature_path"):
    prepare(config, str(tmp_path / "run"))


def test_finetune_from_hf_starts_near_identity_and_can_train_temperatures_only(corpus, tmp_path):
  """SSA added to a pretrained (here: random) HF model: step-0 loss equals the vanilla model's, and in
  temperatures-only mode nothing but the SSA parameters moves."""
  from hf_models import make_hf_model

  from ssa_jax.formats.hf import from_hf
  from ssa_jax.model.config import model_config_from_dict
  from ssa_jax.model.params import ssa_groups
  from ssa_jax.train.step import next_token_loss

  make_hf_model("neox", tmp_path / "hf", vocab_size=512, max_position_embeddings=64)
  config = demo_run_config(corpus, steps=3, checkpoint_every=0, temperatures_only=True, temperature_scalar_lr_multiplier=50.0,
                   temperature_matrix_lr_multiplier=50.0)
  config.init.hf_dir = str(tmp_path / "hf")
  vanilla_model, vanilla = from_hf(tmp_path / "hf")
  for field in ("d_model", "num_layers", "num_heads", "mlp_dim", "max_seq_len", "vocab_size", "rotary_pct",
                "parallel_residual", "tie_embeddings"):
    config.model[field] = getattr(vanilla_model.config, field)
  config.model.ssa.position_tau_at_end = 1.001

  from ssa_jax.data.pipeline import make_lm_iterator
  from ssa_jax.data.tokenizer import load_tokenizer

  it = make_lm_iterator(config.data, split="train", seq_len=16, global_batch_size=8, process_index=0,
                        process_count=1, tokenizer=load_tokenizer(corpus[1]))
  batch = next(it)
  it.close()  # its reader threads end here, not at the end of the test session
  vanilla_loss = float(next_token_loss(vanilla_model, vanilla, batch["tokens"])[0])
  summary = train(config, str(tmp_path / "ft"))
  first = run_losses(tmp_path / "ft")[1]
  assert abs(first - vanilla_loss) < 1e-3 * vanilla_loss, (first, vanilla_loss)

  tuned = run_final_params(tmp_path / "ft")
  before = traverse_util.flatten_dict(vanilla["params"])
  groups = ssa_groups(model_config_from_dict(config.model))
  moved = [k for k in tuned if k in groups and np.abs(tuned[k]).max() > 0
           and not k[-1] == "alpha"]
  assert moved, "the temperature weights did not train"
  for k, v in before.items():
    np.testing.assert_array_equal(tuned[k], np.asarray(v), err_msg="/".join(k))
  assert summary["step"] == 3


@pytest.mark.parametrize("missing,field,message", [
    ({"gcsfs", "google.cloud.storage"}, "workdir", r"--workdir: 'gs://b/run' is a gs:// path, which needs gcsfs"),
    ({"google.cloud.storage"}, "workdir", r"--workdir \(TensorBoard event files\): .* needs google-cloud-storage"),
    ({"gcsfs"}, "init.hf_dir", r"config\.init\.hf_dir: 'gs://b/run' is a gs:// path, which needs gcsfs"),
])
def test_gs_paths_without_the_gcs_extra_fail_before_anything_runs(corpus, tmp_path, monkeypatch, missing, field,
                                                                   message):
  from ssa_jax.runtime import gcs

  monkeypatch.setattr(gcs, "_installed", lambda module: module not in missing)
  config = demo_run_config(corpus, tensorboard=True)
  workdir = str(tmp_path / "run")
  if field == "workdir":
    workdir = "gs://b/run"
  else:
    config.init.hf_dir = "gs://b/run"
  with pytest.raises(gcs.GcsSupportMissing, match=message + r".*pip install 'ssa-jax\[gcs\]'"):
    prepare(config, workdir)


def _snapshot(workdir: Path) -> dict[str, tuple[int, int]]:
  """Every file under `workdir`: (size, mtime in ns)."""
  return {str(p.relative_to(workdir)): (p.stat().st_size, p.stat().st_mtime_ns) for p in workdir.rglob("*")
          if p.is_file()}


def _one_error_line(proc) -> str:
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  return lines[0]


@pytest.fixture(scope="module")
def finished(corpus, tmp_path_factory):
  """A run the command trained to its end (3 steps): (command-line arguments, workdir, the process)."""
  config = demo_run_config(corpus, steps=3, checkpoint_every=3, eval_batches=1)
  workdir = tmp_path_factory.mktemp("finished") / "run"
  args = [str(REPO / "train.py"), *run_cli_args(config, workdir)]
  return args, workdir, run_python(args)


def test_the_end_of_a_run_says_its_wall_time_and_checkpoint(finished):
  _, workdir, proc = finished
  done = [l for l in proc.stderr.splitlines() if l.startswith("done: ")]
  assert len(done) == 1 and re.fullmatch(rf"done: step 3, [0-9.]+s from start to end; checkpoint "
                                         rf"{re.escape(str(workdir))}/checkpoints/3", done[0]), proc.stderr[-2000:]
  summary = json.loads(proc.stdout[proc.stdout.index("{"):])
  assert summary["wall_s"] > 0 and summary["loss"] is not None
  assert json.loads((workdir / preflight.SUMMARY_NAME).read_text()) == summary


def test_rerunning_a_complete_run_says_so_and_writes_nothing(finished):
  args, workdir, first = finished
  before = _snapshot(workdir)
  proc = run_python(args)
  assert f"{workdir}: complete at step 3 (config.train.steps): checkpoint {workdir}/checkpoints/3" in proc.stderr
  assert "training neox" not in proc.stderr and "Traceback" not in proc.stderr  # neither trained nor validated
  summary = json.loads(proc.stdout[proc.stdout.index("{"):])
  assert summary == dict(json.loads(first.stdout[first.stdout.index("{"):]), already_complete=True)
  assert summary["loss"] is not None and summary["val_loss"] is not None
  assert _snapshot(workdir) == before


def test_a_workdir_of_another_config_is_refused_in_one_line_before_anything_is_written(finished):
  args, workdir, _ = finished
  before = _snapshot(workdir)
  # steps may change on resume (it is not named); the position kind and the learning rate may not.
  proc = run_python([*args, "--config.model.ssa.position_kind=yarn", "--config.train.lr=1e-3", "--config.train.steps=6"],
              check=False)
  line = _one_error_line(proc)
  assert f"--workdir {workdir}: its checkpoint 3 was made by another config (2 fields differ:" in line, line
  assert "config.model.ssa.position_kind: 'log' there, 'yarn' here" in line and "config.train.lr:" in line, line
  assert "train.steps" not in line
  assert _snapshot(workdir) == before


def _jsonl_corpus(root: Path, validation_docs: list[str] | None) -> Path:
  """A custom corpus: train.jsonl (40 chapters of the demo text) and, unless None, validation.jsonl."""
  from ssa_jax.data.demo import kjv_chapters

  root.mkdir()
  (root / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in kjv_chapters()[:40]))
  if validation_docs is not None:
    (root / "validation.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in validation_docs))
  return root


def test_an_empty_validation_split_is_refused_when_training_asks_for_validation(corpus, tmp_path):
  config = demo_run_config(corpus, eval_every=2, eval_batches=2)
  config.data.path = str(_jsonl_corpus(tmp_path / "corpus", ["In the beginning."]))  # less than one batch
  workdir = tmp_path / "run"
  proc = run_python([str(REPO / "train.py"), *run_cli_args(config, workdir), "--config.data.demo=False"], check=False)
  line = _one_error_line(proc)
  assert "config.data.validation_split: the 'validation' split" in line and "holds less than one batch" in line
  assert "config.train.eval_every=2 asks for validation" in line and "--config.train.eval_batches=0" in line
  assert not workdir.exists()  # nothing written, not even an empty workdir


def test_an_empty_validation_split_with_validation_at_the_end_only_is_said_at_start(corpus, tmp_path, capsys):
  config = demo_run_config(corpus, eval_every=0, eval_batches=2)
  config.data.demo = False
  config.data.path = str(_jsonl_corpus(tmp_path / "corpus", None))  # no validation file at all
  preflight.check_validation(prepare(config, str(tmp_path / "run")))
  err = capsys.readouterr().err
  assert "validation: off, config.data.validation_split: the 'validation' split" in err and "has no files" in err
  config.train.eval_every = 5
  with pytest.raises(ConfigError, match=r"config\.data\.validation_split: .* has no files"):
    preflight.check_validation(prepare(config, str(tmp_path / "run")))


def test_the_host_stays_at_most_one_step_ahead_of_the_devices(corpus, tmp_path, monkeypatch):
  """What makes Ctrl-C stop after the step under way: before each dispatch, at most the previous step is
  still running (without the loop's wait the host ran ahead to the next log step's read)."""
  from ssa_jax.train import loop

  make_step, running = loop.jit_loop_step, []

  def recording(*args, **kwargs):
    step_fn, losses = make_step(*args, **kwargs), []

    def step(state, counts, batch):
      running.append(sum(not loss.is_ready() for loss in losses))
      out = step_fn(state, counts, batch)
      losses.append(out[2]["loss"])
      return out

    return step

  monkeypatch.setattr(loop, "jit_loop_step", recording)
  train(demo_run_config(corpus, steps=24, log_every=24, checkpoint_every=0), str(tmp_path / "run"))
  assert len(running) == 24 and max(running) <= 1, running
