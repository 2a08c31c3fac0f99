"""docs/config.md: a table of every config field (name, type, default, meaning), generated from the config itself.

  python -m ssa_jax.train.config_table > docs/config.md

The fields and defaults come from `configs/base.py:get_config` (run from the repository root) and, for
`config.model`, from the ModelConfig / RopeScaling / SSAConfig dataclasses. A field's meaning is the comment on the
line that defines it (`name: type = ...` in a dataclass; `config.x = ...`, `c.x = ...` or a `dict(x=...)` keyword in
get_config or a section builder it calls, such as data_config), else the full-line comments right above that line.
tests/test_config_table.py fails when docs/config.md is stale.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from typing import Any, Callable

import ml_collections

from configs import base
from ssa_jax.model.config import ModelConfig, RopeScaling, SSAConfig
from ssa_jax.runtime import cli_errors

MODES = ("pretrain", "finetune", "demo")
PRESET = ("pythia160m", "ssa")  # the model and SSA preset whose get_config values the table shows
DATACLASSES = ((ModelConfig, "model"), (RopeScaling, "model.rope_scaling"), (SSAConfig, "model.ssa"))
_ASSIGN = re.compile(r"^\s*\w+((?:\.\w+)*) = ")  # `config.train.lr = ` -> '.train.lr'; `train = ` -> ''
_ANNOTATED = re.compile(r"^\s*(\w+): \w")  # a dataclass field
_KEYWORD = re.compile(r"(?:^|[(,])\s*(\w+)=(?!=)")  # a field of `dict(k=v, ...)`
_BUILDER = re.compile(r"^\s*config\.(\w+) = (\w+)\(", re.MULTILINE)  # `config.data = data_config()`


def _definitions(obj: Callable | type) -> list[tuple[str, str]]:
  """(field path, its comment) of each field that `obj`'s source defines, in source order. On a line defining
  several fields an inline comment belongs to the one it starts with (`name: ...`); the comments above a line that
  opens a section (`config.mesh = ConfigDict(dict(data=-1, ...))`) describe the section, not its fields."""
  out, above, section = [], [], None
  for line in inspect.getsource(obj).splitlines():
    code, _, inline = (part.strip() for part in line.partition("#"))  # these sources hold no '#' in a string
    if not code:
      above = above + [inline] if inline else []
      continue
    assign, field = _ASSIGN.match(code), _ANNOTATED.match(code)
    if assign:
      path = assign[1][1:]
      owners = [path] if path else []
      section = (path + "." if path else "") if "dict(" in code else None
      names = owners + [section + k for k in _KEYWORD.findall(code)] if section is not None else owners
    elif field:
      section, names, owners = None, [field[1]], [field[1]]
    elif section is not None and re.match(r"\w+=(?!=)", code):  # a line continuing the open dict(...)
      names = owners = [section + k for k in _KEYWORD.findall(code)]
    else:
      section, names, owners = None, [], []
    for name in names:
      leaf = name.rsplit(".", 1)[-1]
      text = inline[len(leaf) + 1:].strip() if inline.startswith(leaf + ":") else inline if len(names) == 1 else ""
      out.append((name, text or (" ".join(above) if name in owners else "")))
    above = []
  return out


def _code(value: Any) -> str:
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  return f"`{value!r}`"


def _lookup(cfg: ml_collections.ConfigDict, path: str) -> Any:
  for part in filter(None, path.split(".")):
    cfg = cfg[part]
  return cfg


def _by_mode(configs: dict[str, ml_collections.ConfigDict], path: str) -> str:
  """`v` of pretrain, with '(finetune: `w`; demo: `x`)' for the modes where it differs."""
  values = {m: _lookup(c, path) for m, c in configs.items()}
  first = values[MODES[0]]
  others = [f"{m}: {_code(v)}" for m, v in values.items() if m != MODES[0] and v != first]
  return _code(first) + (f" ({'; '.join(others)})" if others else "")


def _row(path: str, type_name: str, default: str, meaning: str) -> str:
  cells = (f"`{path}`", type_name, default, meaning)
  return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _model_rows(cls: type, section: str, configs: dict, meaning: dict[str, str], set_in_base: set[str]) -> list[str]:
  """One row per dataclass field: its annotation, its default (and what get_config sets where it does)."""
  rows = []
  for f in dataclasses.fields(cls):
    path = f"{section}.{f.name}"
    factory = f.default_factory if f.default_factory is not dataclasses.MISSING else None
    if f.default is not dataclasses.MISSING:
      default = _code(f.default)
    elif factory:
      default = f"see `{path}.*`"
    else:
      default = "required (a preset of configs/models.py sets it)"
    if path in set_in_base and any(_lookup(c, path) != f.default for c in configs.values()):
      default += f"; get_config sets {_by_mode(configs, path)}"
    nested_doc = (inspect.getdoc(factory) or "").split("\n")[0] if factory else ""
    rows.append(_row(path, str(f.type), default, meaning.get(path, nested_doc)))
  return rows


def _config_rows(section: str, configs: dict, meaning: dict[str, str], rank: dict[str, int]) -> list[str]:
  """Rows of a ConfigDict section's fields (the top level's sections aside), in the order they are defined."""
  cfg = _lookup(configs[MODES[0]], section)
  prefix = section + "." if section else ""
  rows = []
  for key in sorted(cfg.keys(), key=lambda k: (rank.get(prefix + k, len(rank)), k)):
    is_dict = isinstance(cfg[key], ml_collections.ConfigDict)
    if section or not is_dict:
      rows.append(_row(prefix + key, "dict" if is_dict else type(cfg[key]).__name__, _by_mode(configs, prefix + key),
                       meaning.get(prefix + key, "")))
  return rows


def table() -> str:
  """docs/config.md's text."""
  configs = {m: base.get_config(*PRESET, mode=m) for m in MODES}
  builders = [(vars(base)[fn], section + ".") for section, fn in _BUILDER.findall(inspect.getsource(base.get_config))
              if callable(vars(base).get(fn))]
  meaning, rank = {}, {}
  # The dataclasses first: their meanings win over get_config's (`config.model.dtype = ...`).
  for obj, prefix in [*((cls, section + ".") for cls, section in DATACLASSES), (base.get_config, ""), *builders]:
    for path, text in _definitions(obj):
      rank.setdefault(prefix + path, len(rank))
      if text:
        meaning.setdefault(prefix + path, text)
  set_in_base = {p for p, _ in _definitions(base.get_config) if p.startswith("model.")}
  header = ["| field | type | default | meaning |", "|---|---|---|---|"]
  out = [
      "# Config fields",
      "",
      "Generated by `python -m ssa_jax.train.config_table > docs/config.md` from the config itself; do not edit "
      "by hand (tests/test_config_table.py compares). Every field is set on the command line as "
      "`--config.<field>=VALUE`, e.g. `python train.py --config=configs/pythia160m_ssa.py "
      "--config.model.num_layers=6 --config.train.steps=200`.",
      "",
      f"Defaults are `configs/base.py:get_config({PRESET[0]!r}, {PRESET[1]!r}, mode)` for mode 'pretrain', with "
      "the 'finetune' and 'demo' values in brackets where they differ; `config.model` lists the defaults of the "
      "ModelConfig dataclasses (ssa_jax/model/config.py), whose architecture fields each preset sets.",
  ]
  top = configs[MODES[0]]
  sections = sorted((k for k, v in top.items() if isinstance(v, ml_collections.ConfigDict)),
                    key=lambda k: (rank.get(k, len(rank)), k))
  for section in ["", *sections]:
    if section == "model":
      for cls, path in DATACLASSES:
        out += ["", f"## config.{path}", "", (inspect.getdoc(cls) or "").split("\n")[0], "", *header]
        out += _model_rows(cls, path, configs, meaning, set_in_base)
      continue
    title = f"config.{section}" if section else "config (top level)"
    out += ["", f"## {title}", ""] + ([meaning[section], ""] if meaning.get(section) else []) + header
    out += _config_rows(section, configs, meaning, rank)
  return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
  """Prints docs/config.md's text (no arguments)."""
  cli_errors.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
  sys.stdout.write(table())
  return 0


if __name__ == "__main__":
  cli_errors.run_argv(main)
