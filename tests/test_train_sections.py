"""The one config pass (ssa_jax/train/sections.py): the typed train / eval sections of every preset, errors
naming the field, and the one-line warnings of a preset shrunk on the command line."""

import importlib
from pathlib import Path

import pytest

from configs import base
from ssa_jax.errors import ConfigError
from ssa_jax.train import preflight
from ssa_jax.train.sections import eval_section, optim_section, schedule_warnings, train_section

REPO = Path(__file__).resolve().parents[1]
NOT_PRESETS = ("__init__", "base", "models", "table8")  # table8: the rows the table8 presets build on
PRESETS = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem not in NOT_PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_presets_sections_hold_its_config_values_unchanged(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  t, ev = train_section(config.train), eval_section(config.eval)
  for field, value in config.train.items():
    assert getattr(t, field) == value and type(getattr(t, field)) in (type(value), float), field
  assert ev.tasks == config.eval.tasks
  assert (ev.at_end, ev.passkey, ev.heldout_split) == (config.eval.at_end, config.eval.passkey,
                                                       config.eval.heldout_split)


@pytest.mark.parametrize("field,value,message", [
    ("warmup_steps", -1, "config.train.warmup_steps: expected an int >= 0, got -1"),
    ("steps", 0, "config.train.steps: expected an int >= 1, got 0"),
    ("b2", 1.0, "config.train.b2: expected a number in [0, 1), got 1.0"),
    ("lr", -3e-4, "config.train.lr: expected a number >= 0, got -0.0003"),
    ("temperature_matrix_lr_multiplier", -1.0,
     "config.train.temperature_matrix_lr_multiplier: expected a number >= 0, got -1.0"),
    ("schedule", "linear", "config.train.schedule: unknown 'linear'; expected one of ('cosine', 'constant')"),
    ("tensorboard", 1, "config.train.tensorboard: expected True or False, got 1"),
])
def test_a_bad_train_field_is_named_with_what_was_expected(field, value, message):
  train = base.get_config("tiny", "ssa", mode="demo").train.to_dict()
  train[field] = value
  with pytest.raises(ConfigError) as error:
    train_section(train)
  assert str(error.value) == message
  if field in ("lr", "b2", "schedule", "temperature_matrix_lr_multiplier"):  # the optimizer's fields too
    with pytest.raises(ConfigError, match=r"^config\.train\." + field):
      optim_section(train)


def test_the_eval_tasks_are_the_names_between_commas():
  ev = base.get_config("tiny", "ssa", mode="demo").eval.to_dict()
  ev["tasks"] = "piqa,,hellaswag"
  assert eval_section(ev).task_names == ["piqa", "hellaswag"]
  ev["batch_size"] = 0
  with pytest.raises(ConfigError, match=r"^config\.eval\.batch_size: expected an int >= 1, got 0$"):
    eval_section(ev)


def test_a_field_the_train_section_does_not_have_is_named():
  train = base.get_config("tiny", "ssa", mode="demo").train.to_dict()
  train["temperature_lr_multiplier"] = 1e4
  with pytest.raises(ConfigError, match=r"^config\.train\.temperature_lr_multiplier: not a field of config\.train"):
    train_section(train)


def test_a_full_size_preset_has_no_warnings():
  assert schedule_warnings(train_section(importlib.import_module("configs.pythia160m_ssa").get_config().train)) == []


def test_a_preset_shrunk_on_the_command_line_warns_once_per_cadence_in_the_dry_run(capsys):
  """pythia160m_ssa with --config.train.steps=200 keeps warmup 286, eval_every 1000, checkpoint_every 1000."""
  config = importlib.import_module("configs.pythia160m_ssa").get_config()
  config.mesh.num_devices = 1
  config.train.steps = 200
  ctx = preflight.check_config(config, None, dry_run=True)
  lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
  assert len(lines) == 3 and len(ctx.warnings) == 3, lines
  assert lines[0].startswith("warning: config.train.warmup_steps: 286 >= config.train.steps=200")
  assert lines[1].startswith("warning: config.train.eval_every: 1000 > config.train.steps=200")
  assert lines[2].startswith("warning: config.train.checkpoint_every: 1000 > config.train.steps=200")


def test_the_run_warns_too_and_only_about_the_cadences_longer_than_it(tmp_path, capsys):
  """The demo preset (600 steps: warmup 30, eval and checkpoint every 200) cut to 100 steps: only the two
  cadences of 200 outlast it; the warmup of 30 still reaches the peak."""
  config = importlib.import_module("configs.tiny_ssa").get_config()
  config.mesh.num_devices = 1
  config.train.steps = 100
  ctx = preflight.check_config(config, str(tmp_path / "run"))
  lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
  assert [line.split(":")[1].strip() for line in lines] == ["config.train.eval_every",
                                                             "config.train.checkpoint_every"], lines
  assert ctx.warnings == [line[len("warning: "):] for line in lines]
  assert not (tmp_path / "run").exists()
