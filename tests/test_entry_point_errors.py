"""Every `python -m ssa_jax...` entry point family answers a missing path or a bad argument with one `error:`
line on stderr and exit 2 (as train.py and eval.py do), the traceback only with --verbosity=1.

In-process (main through cli_errors.run_argv, as their `__main__` runs it) where the module allows; one
subprocess per kind of `__main__` (absl, argparse) checks the wiring itself.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssa_jax.runtime import cli_errors

REPO = Path(__file__).resolve().parents[1]


def _one_line_exit_2(capsys, main, argv) -> str:
  with pytest.raises(SystemExit) as e:
    cli_errors.run_argv(main, argv)
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
  return err


def test_analyses_name_the_missing_workdir_or_checkpoint(tmp_path, capsys):
  from ssa_jax.analysis import curves, norms, temperatures

  missing = str(tmp_path / "nope")
  assert f"workdir {missing}: does not exist" in _one_line_exit_2(capsys, curves.main, [missing])
  assert f"checkpoint {missing}: does not exist" in _one_line_exit_2(capsys, norms.main, [missing])
  err = _one_line_exit_2(capsys, temperatures.main, [f"--checkpoint={missing}", "--text=hi"])
  assert f"{missing}: does not exist" in err
  err = _one_line_exit_2(capsys, temperatures.main, [f"--hf_dir={missing}", "--text=hi"])
  assert f"{missing}: no such directory" in err
  assert "the following arguments are required: workdirs" in _one_line_exit_2(capsys, curves.main, [])
  with pytest.raises(FileNotFoundError):  # --verbosity=1: the traceback, as train.py / eval.py
    cli_errors.run_argv(curves.main, [missing, "--verbosity=1"])


def test_hf_and_experiments_mistakes_are_one_line(tmp_path, capsys):
  from ssa_jax.formats import hf
  from ssa_jax.experiments import denoise

  err = _one_line_exit_2(capsys, hf.main, ["export", str(tmp_path / "nope"), str(tmp_path / "out")])
  assert f"{tmp_path / 'nope'}: does not exist" in err and not (tmp_path / "out").exists()
  assert "invalid choice: 'importt'" in _one_line_exit_2(capsys, hf.main, ["importt", "a", "b"])
  assert "unrecognized arguments: --no_such_field=1" in _one_line_exit_2(capsys, denoise.main, ["--no_such_field=1"])


def _module(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["ssa_jax.data.inspect", "{missing}"], "error: {missing}: does not exist (expected a corpus directory or file)"),
    (["ssa_jax.data.token_counts", "{missing}", "--output={tmp}/c.npy"], "error: {missing}: does not exist"),
    (["ssa_jax.analysis.curves", "{missing}"], "error: workdir {missing}: does not exist"),
])
def test_main_blocks_print_one_line_and_exit_2(tmp_path, args, message):
  """The `__main__` wiring of an absl (data.*) and an argparse (analysis.*) entry point; both import little."""
  fill = dict(missing=tmp_path / "nope", tmp=tmp_path)
  r = _module(*[a.format(**fill) for a in args])
  assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith(message.format(**fill)), r.stderr
  assert list(tmp_path.iterdir()) == []  # nothing written before the refusal


def test_every_entry_point_exits_through_cli_errors():
  """Every `python -m ssa_jax...` module and top-level script ends in cli_errors' guarded call, so a mistake is
  one `error:` line and exit 2 there too (the subprocess tests above run three of them)."""
  scripts = sorted(REPO.glob("*.py")) + sorted((REPO / "ssa_jax").rglob("*.py"))
  unguarded = []
  for path in scripts:
    text = path.read_text()
    marker = 'if __name__ == "__main__":'
    if marker not in text:
      continue
    block = text.split(marker, 1)[1]
    if "cli_errors.run(" not in block and "cli_errors.run_argv(" not in block:
      unguarded.append(str(path.relative_to(REPO)))
  assert unguarded == [], f"entry points without cli_errors.run / run_argv: {unguarded}"


@pytest.mark.parametrize("order", [0, 1])
def test_an_override_error_names_the_invalid_flag_not_a_valid_one_with_the_same_field(order):
  """config.model has num_layers, config.train does not: the error blames --config.train.num_layers whatever the
  order of the two flags."""
  flags_given = ["--config.model.num_layers=2", "--config.train.num_layers=2"]
  if order:
    flags_given.reverse()
  r = subprocess.run([sys.executable, "train.py", "--config=configs/tiny.py", *flags_given], cwd=REPO,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
  assert r.stderr.startswith("error: --config.train.num_layers: config.train has no field 'num_layers'"), r.stderr


def test_project_warnings_print_as_plain_lines_without_absls_prefix(tmp_path):
  """A data warning logged under absl's app.run (as train.py runs) is `warning: ...`, once, not `W1206 ...] ...`."""
  script = tmp_path / "entry.py"
  script.write_text(
      "import logging\n"
      "from ssa_jax.runtime import cli_errors\n"
      "def main(argv):\n"
      "  logging.getLogger('ssa_jax.data.packing').warning('data: skipping bad record (%s) at %s', 'x', 'f.jsonl')\n"
      "  logging.getLogger('ssa_jax.data.packing').info('an info line below the warning level')\n"
      "cli_errors.run(main, config_flag_names=())\n")
  r = subprocess.run([sys.executable, str(script), "--verbosity=-1"], cwd=REPO, capture_output=True, text=True,
                     timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert r.returncode == 0, r.stderr
  assert r.stderr == "warning: data: skipping bad record (x) at f.jsonl\n", r.stderr
