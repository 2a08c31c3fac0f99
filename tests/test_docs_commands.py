"""Every command shown in README.md and docs/*.md names a script, flag and config field that exists.

A command is a line of a ``` block (continuation lines joined) that starts with `python`, `python3 -m venv ... &&`,
`bash` or an environment assignment before one of those, or an inline `python ...` code span. For each:
- `python train.py` / `eval.py` / `sample.py`: every `--flag` is one of the script's absl flags (read by importing the script in
  a subprocess, without running it);
- `python -m ssa_jax.X`, `python bench/X.py`: the module or file exists and each `--flag` is one its argparse /
  absl definitions name (read from its source; the synthetic studies' flags from their `default_config()`);
- `--config=C` (train.py, the comparison): C exists, and every `--config.a.b=...` names a field of C's get_config();
- `configs/...`, `bench/...`, `tests/...` paths exist; `pip install -e '.[x]'` names an extra of pyproject.toml, and
  `pip install -c FILE` a file of the repository.
Every relative link of README/docs points to a file that exists (and to a heading of it, for `#anchor` links).
A failure lists each document:line, the command and the unknown name, so either side can be fixed.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import ml_collections

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ABSL_ALWAYS = {"help", "helpshort", "helpfull", "helpxml", "flagfile", "undefok", "v"}
ABSL_SCRIPTS = ("train.py", "eval.py", "sample.py")  # imported for their real flags; the rest are read from source
COMMAND_START = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S+\s+)*(python3?|bash)\s")


def _rel(path: Path) -> str:
  return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def extract_commands(text: str) -> list[tuple[int, str]]:
  """(line number, command) for each command of a markdown text: ``` block lines and inline `python ...` spans."""
  commands, in_fence, pending, pending_line = [], False, "", 0
  for number, line in enumerate(text.split("\n"), start=1):
    if line.lstrip().startswith("```"):
      in_fence, pending = not in_fence, ""
      continue
    if in_fence:
      if pending:
        pending += " " + line.strip()
      elif COMMAND_START.match(line.strip()):
        pending, pending_line = line.strip(), number
      else:
        continue
      if pending.endswith("\\"):
        pending = pending[:-1].rstrip()
        continue
      commands.append((pending_line, pending))
      pending = ""
    else:
      for span in re.findall(r"`([^`]+)`", line):
        if COMMAND_START.match(span.strip() + " "):
          commands.append((number, span.strip()))
  return commands


@functools.lru_cache(maxsize=None)
def absl_builtin_flags() -> frozenset[str]:
  """The flags absl.app and absl.logging define for every absl program."""
  names = _imported_flags_by_module("train.py")
  return frozenset(ABSL_ALWAYS | {n for module, flags in names.items() if module.startswith("absl.") for n in flags})


@functools.lru_cache(maxsize=None)
def _imported_flags_by_module(script: str) -> dict[str, list[str]]:
  """Imports `script` in a fresh interpreter (its main does not run) and returns its absl flags by module."""
  code = ("import json, runpy, sys; sys.argv = ['x']; sys.path.insert(0, '.');"
          f"import importlib; importlib.import_module({Path(script).stem!r});"
          "from absl import flags;"
          "print(json.dumps({m: [f.name for f in fs] for m, fs in flags.FLAGS.flags_by_module_dict().items()}))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, f"importing {script} to read its flags failed:\n{out.stderr[-2000:]}"
  return json.loads(out.stdout.strip().splitlines()[-1])


def _source_definitions(path: Path) -> tuple[set[str], set[str], dict[str, str], bool]:
  """From a script's source: its flag names, argparse subcommands, DEFINE_config_file defaults, and absl or not."""
  tree = ast.parse(path.read_text())
  names, subcommands, config_defaults, uses_absl = set(), set(), {}, False
  for node in ast.walk(tree):
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
      continue
    attr = node.func.attr
    literals = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if attr.startswith("DEFINE") and literals:
      uses_absl = True
      names.add(literals[0])
      if attr == "DEFINE_config_file" and len(literals) > 1:
        config_defaults[literals[0]] = literals[1]
    elif attr == "add_argument":
      names.update(s[2:] for s in literals if s.startswith("--"))
    elif attr == "add_parser" and literals:
      subcommands.add(literals[0])
  return names, subcommands, config_defaults, uses_absl


@functools.lru_cache(maxsize=None)
def script_flags(target: str) -> tuple[frozenset[str], frozenset[str], dict[str, str]]:
  """(flag names, subcommands, config-file flags -> default) of a script path or `-m` module."""
  path = ROOT / target
  if target in ABSL_SCRIPTS:
    by_module = _imported_flags_by_module(target)
    own = {n for module, flags in by_module.items() if not module.startswith("absl.") for n in flags}
    _, _, config_defaults, _ = _source_definitions(path)
    return frozenset(own | absl_builtin_flags()), frozenset(), config_defaults
  names, subcommands, config_defaults, uses_absl = _source_definitions(path)
  if path.name == "__main__.py":  # a command package (experiments/compare): its flags are defined beside it
    for module in sorted(path.parent.glob("*.py")):
      more = _source_definitions(module)
      names, subcommands, uses_absl = names | more[0], subcommands | more[1], uses_absl or more[3]
      config_defaults = {**config_defaults, **more[2]}
  source = path.read_text()
  # The synthetic studies (experiments/common.py): one flag per top-level field of their default_config().
  if re.search(r"(parse_config|run_study)\((argv, )?default_config\(\)", source):
    module = importlib.import_module(target[:-3].replace("/", "."))
    names |= set(module.default_config().keys())
  names |= {"help"} | (absl_builtin_flags() if uses_absl else {"h"})
  return frozenset(names), frozenset(subcommands), config_defaults


@functools.lru_cache(maxsize=None)
def load_config(spec: str) -> ml_collections.ConfigDict:
  """get_config() of a config file given as config_flags takes it (`configs/x.py` or `configs/x.py:arg,...`)."""
  file, _, args = spec.partition(":")
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  module = importlib.import_module(str(Path(file).with_suffix("")).replace("/", "."))
  return module.get_config(*args.split(",")) if args else module.get_config()


def _config_field_problem(spec: str, dotted: str) -> str | None:
  """None when `dotted` (a.b.c) is a field of the config `spec`, else what is missing."""
  node, walked = load_config(spec), "config"
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "none: not a section"
      return f"{spec} has no field {walked}.{part} ({walked}'s fields: {known})"
    node, walked = node[part], f"{walked}.{part}"
  return None


def _looks_like_repo_path(token: str) -> bool:
  return re.match(r"^(configs|bench|tests|ssa_jax)/[\w./-]+\.(py|sh)$", token) is not None


def check_segment(tokens: list[str], extras: set[str]) -> list[str]:
  """Problems of one command (no `&&`), as one-line strings."""
  while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
    tokens = tokens[1:]
  if not tokens:
    return []
  problems = []
  if tokens[0] in ("pip", "pip3"):
    for before, token in zip(["", *tokens], tokens):
      match = re.match(r"^\.\[([\w,-]+)\]$", token)
      for extra in match.group(1).split(",") if match else ():
        if extra not in extras:
          problems.append(f"pyproject.toml has no extra [{extra}] (extras: {', '.join(sorted(extras))})")
      if before in ("-c", "--constraint", "-r", "--requirement") and not (ROOT / token).is_file():
        problems.append(f"pip {before} {token}: {token} does not exist")
    return problems
  if tokens[0] == "bash":
    if len(tokens) > 1 and not (ROOT / tokens[1]).is_file():
      problems.append(f"script {tokens[1]} does not exist")
    return problems
  if tokens[0] not in ("python", "python3"):
    return []
  args = tokens[1:]
  if args[:1] == ["-m"] and len(args) > 1:
    module, args = args[1], args[2:]
    if not module.startswith("ssa_jax"):
      if module != "venv" and importlib.util.find_spec(module) is None:
        problems.append(f"module {module} is not installed")
      return problems  # a third-party module's flags are its own business
    candidates = [Path(*module.split(".")).with_suffix(".py"), Path(*module.split("."), "__main__.py")]
    target = next((str(c) for c in candidates if (ROOT / c).is_file()), None)
    if target is None:
      return [f"module {module} does not exist (no {candidates[0]} or {candidates[1]})"]
    label = f"python -m {module}"
  elif args and args[0].endswith(".py"):
    target, args = args[0], args[1:]
    if not (ROOT / target).is_file():
      return [f"script {target} does not exist"]
    label = target
  else:
    return []
  names, subcommands, config_defaults = script_flags(target)
  positionals = [a for a in args if not a.startswith("-")]
  if subcommands and positionals and positionals[0] not in subcommands:  # a bare module name is a mention
    problems.append(f"{label} has no subcommand {positionals[0]!r} (subcommands: {', '.join(sorted(subcommands))})")
  given = {a[2:].partition("=")[0]: a.partition("=")[2] for a in args if a.startswith("--")}
  for arg in args:
    if not arg.startswith("--"):
      if _looks_like_repo_path(arg) and not (ROOT / arg).is_file():
        problems.append(f"{label}: path {arg} does not exist")
      continue
    name, _, value = arg[2:].partition("=")
    root_flag = name.partition(".")[0]
    if "." in name and root_flag in config_defaults:
      spec = given.get(root_flag) or config_defaults[root_flag]
      if (ROOT / spec.partition(":")[0]).is_file():
        problem = _config_field_problem(spec, name.partition(".")[2])
        if problem:
          problems.append(f"{label} --{name}: {problem}")
      continue
    if name not in names and not (name.startswith("no") and name[2:] in names):
      problems.append(f"{label} has no flag --{name} (its flags: {', '.join(sorted(names - absl_builtin_flags()))})")
    elif name in config_defaults and value and value != "..." and not (ROOT / value.partition(":")[0]).is_file():
      problems.append(f"{label} --{name}: config file {value} does not exist")
    elif _looks_like_repo_path(value) and not (ROOT / value).is_file():
      problems.append(f"{label} --{name}: path {value} does not exist")
  return problems


def check_command(command: str, extras: set[str]) -> list[str]:
  """Problems of a shown command line (`a && b && c` checked part by part)."""
  try:
    tokens = shlex.split(command, comments=True)
  except ValueError as e:
    return [f"cannot split the command: {e}"]
  problems, segment = [], []
  for token in [*tokens, "&&"]:
    if token in ("&&", ";", "||"):
      problems += check_segment(segment, extras)
      segment = []
    else:
      segment.append(token)
  return problems


@functools.lru_cache(maxsize=None)
def pyproject_extras() -> frozenset[str]:
  return frozenset(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {}))


def heading_anchors(text: str) -> set[str]:
  """GitHub's anchors for the headings of a markdown text (outside ``` blocks)."""
  anchors, in_fence = set(), False
  for line in text.split("\n"):
    if line.lstrip().startswith("```"):
      in_fence = not in_fence
    elif not in_fence and re.match(r"^#{1,6} ", line):
      title = line.lstrip("#").strip().lower()
      anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
  return anchors


def link_problems(doc: Path) -> list[str]:
  """Relative links of `doc` whose file (or heading) does not exist."""
  text, problems = doc.read_text(), []
  for number, line in enumerate(text.split("\n"), start=1):
    for target in re.findall(r"\]\(([^)\s]+)\)", line):
      if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        continue
      file, _, anchor = target.partition("#")
      path = (doc.parent / file).resolve() if file else doc
      if not path.exists():
        problems.append(f"{_rel(doc)}:{number}: link {target}: {path} does not exist")
      elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path.read_text()):
        problems.append(f"{_rel(doc)}:{number}: link {target}: {_rel(path)} has no heading #{anchor}")
  return problems


def test_docs_exist_and_commands_are_found():
  assert (ROOT / "docs").is_dir() and len(DOCS) > 5
  readme = [c for _, c in extract_commands((ROOT / "README.md").read_text())]
  assert any(c.endswith("python train.py --config=configs/tiny_ssa.py --workdir=runs/tiny_ssa") for c in readme)
  assert any("python -m pytest -q" in c for c in readme)
  # Both installs at the pinned versions: every pip install of the README's commands takes the constraints file.
  installs = [part for c in readme for part in c.split("&&") if "pip install" in part]
  assert len(installs) >= 3 and all("-c constraints.txt" in part for part in installs), installs
  continued = extract_commands("```\npython train.py --config=configs/tiny.py \\\n    --config.train.steps=3  # c\n```")
  assert continued == [(2, "python train.py --config=configs/tiny.py --config.train.steps=3  # c")]


def test_checker_rejects_unknown_names():
  """The checks can fail: each kind of wrong name is reported with the name."""
  extras = set(pyproject_extras())
  bad = {
      "python train.py --config=configs/tiny_ssa.py --config.train.lrr=1": "config.train.lrr",
      "python train.py --config=configs/tiny_ssa.py --no_such_flag=1": "--no_such_flag",
      "python train.py --config=configs/tiny_sa.py": "configs/tiny_sa.py",
      "python eval.py --hf_dirr=x": "--hf_dirr",
      "python -m ssa_jax.analysis.curves a b --metricz loss": "--metricz",
      "python -m ssa_jax.formats.hf importt a b": "importt",
      "python -m ssa_jax.no_such_module --x": "ssa_jax.no_such_module",
      "python -m ssa_jax.experiments.denoise --no_such_field=1": "--no_such_field",
      "python bench/no_such_bench.py": "bench/no_such_bench.py",
      "python3 -m venv .venv && pip install -e '.[cudaa]'": "[cudaa]",
      "python3 -m venv .venv && pip install -c constraint.txt -e .": "constraint.txt",
  }
  for command, name in bad.items():
    problems = check_command(command, extras)
    assert problems and name in problems[0], (command, problems)
  good = ("python train.py --config=configs/tiny_ssa.py --config.model.ssa.position_kind=yarn --workdir=x --dry_run "
          "--nodry_run --verbosity=1")
  assert check_command(good, extras) == []
  assert check_command("python -m ssa_jax.experiments.denoise --steps=10", extras) == []


def test_link_checker_rejects_missing_files_and_headings(tmp_path):
  (tmp_path / "other.md").write_text("# Other\n\n## A section (`x.y`)\n")
  doc = tmp_path / "doc.md"
  doc.write_text("[ok](other.md#a-section-xy) [web](https://example.org/x)\n[gone](missing.md)\n[bad](other.md#nope)\n")
  problems = link_problems(doc)
  assert len(problems) == 2 and "missing.md" in problems[0] and "#nope" in problems[1], problems


def test_every_command_names_existing_flags_and_config_fields():
  extras, problems = set(pyproject_extras()), []
  for doc in DOCS:
    for number, command in extract_commands(doc.read_text()):
      problems += [f"{_rel(doc)}:{number}: `{command}`: {p}" for p in check_command(command, extras)]
  assert not problems, "commands naming what does not exist:\n" + "\n".join(problems)


def test_every_relative_link_resolves():
  problems = [p for doc in DOCS for p in link_problems(doc)]
  assert not problems, "broken links:\n" + "\n".join(problems)
