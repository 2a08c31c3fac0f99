"""docs/config.md: a table of every config field (name, type, default, meaning), generated from the config itself.

  python -m ssa_jax.train.config_table > docs/config.md

The fields and defaults come from `configs/base.py:get_config` (run from the repository root) and, for
`config.model`, from the ModelConfig / SSAConfig / RopeScaling dataclasses; each meaning is the comment beside or
right above the line that defines the field (in the dataclass, in get_config, or in the section builder that
get_config calls, such as data_config). tests/test_config_table.py fails when docs/config.md is stale.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
from collections import Counter
from typing import Any, Callable, Iterator

import ml_collections

from configs import base
from ssa_jax.model.config import ModelConfig
from ssa_jax.runtime import cli_errors

MODES = ("pretrain", "finetune", "demo")
PRESET = ("pythia160m", "ssa")  # the model and SSA preset whose get_config values the table shows
_CODE_TOKENS = frozenset(set(tokenize.tok_name) - {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE,
                                                    tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER})


def _comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
  """({line: its inline comment}, {line: the block of full-line comments right above it}) of `source`."""
  tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
  code_lines = {t.start[0] for t in tokens if t.type in _CODE_TOKENS}
  inline, full = {}, {}
  for t in tokens:
    if t.type == tokenize.COMMENT:
      (inline if t.start[0] in code_lines else full)[t.start[0]] = t.string.lstrip("#").strip()
  above = {}
  for line in sorted(full):
    if line - 1 not in full:  # the start of a block: it belongs to the line right after its end
      end, texts = line, []
      while end in full:
        texts.append(full[end])
        end += 1
      above[end] = " ".join(texts)
  return inline, above


def _attr_path(node: ast.AST) -> str | None:
  """'config.train.lr' -> 'train.lr' (the root variable dropped); None for anything but an attribute chain."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  return ".".join(reversed(parts)) if parts and isinstance(node, ast.Name) else None


def _dict_keywords(value: ast.AST) -> list[ast.keyword]:
  """The keywords of `ConfigDict(dict(k=...))` or `dict(k=...)`; none for any other expression."""
  if isinstance(value, ast.Call) and value.args and isinstance(value.args[0], ast.Call):
    value = value.args[0]
  if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict":
    return [kw for kw in value.keywords if kw.arg]
  return []


def _sites(tree: ast.AST) -> Iterator[tuple[str, int, ast.AST]]:
  """(field path, line, value) of every field a dataclass body or a config-building function defines."""
  body = tree.body if isinstance(tree, ast.ClassDef) else list(ast.walk(tree))
  for stmt in body:
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
      yield stmt.target.id, stmt.lineno, stmt.value
    elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
      if isinstance(stmt.targets[0], ast.Name):  # `train = ConfigDict(dict(...))`: a builder's own section
        yield from ((kw.arg, kw.lineno, kw.value) for kw in _dict_keywords(stmt.value))
        continue
      path = _attr_path(stmt.targets[0])
      if path is None:
        continue
      yield path, stmt.lineno, stmt.value
      for kw in _dict_keywords(stmt.value):
        yield f"{path}.{kw.arg}", kw.lineno, kw.value


def _parsed(obj: Callable | type) -> tuple[ast.AST, str]:
  source = textwrap.dedent(inspect.getsource(obj))
  return ast.parse(source).body[0], source


def meanings(obj: Callable | type, prefix: str = "") -> dict[str, str]:
  """{field path: the comment that explains it} for a dataclass or a function that builds a ConfigDict. A comment
  beside a line that defines several fields belongs to one only when it starts with that field's name."""
  tree, source = _parsed(obj)
  inline, above = _comments(source)
  sites = list(_sites(tree))
  per_line = Counter(line for _, line, _ in sites)
  # A comment above `config.mesh = ConfigDict(dict(data=-1, ...))` describes the section, not each field.
  section_lines = {line for path, line, value in sites if _dict_keywords(value)}
  out: dict[str, str] = {}
  for path, line, value in sites:
    name = path.rsplit(".", 1)[-1]
    text = inline.get(line, "")
    if text.startswith(name + ":"):
      text = text[len(name) + 1:].strip()
    elif per_line[line] > 1:
      text = ""
    if not text and (line not in section_lines or _dict_keywords(value)):
      text = above.get(line, "")
    if text and prefix + path not in out:
      out[prefix + path] = text
  return out


def _builders() -> dict[str, Callable]:
  """{section: the function of configs/base.py's namespace that get_config calls to build it}
  (`config.data = data_config()` -> data_config, `config.train = _train_config(mode, ...)` -> _train_config)."""
  tree, _ = _parsed(base.get_config)
  found = {}
  for path, _, value in _sites(tree):
    if isinstance(value, ast.Call) and "." not in path:
      name = value.func.id if isinstance(value.func, ast.Name) else None
      if name and callable(base.__dict__.get(name)):
        found[path] = base.__dict__[name]
  return found


def _all_meanings() -> dict[str, str]:
  """Every field's meaning: the dataclasses' comments first, then get_config's and its section builders'."""
  out: dict[str, str] = {}
  for cls, prefix in _dataclasses():
    for path, text in meanings(cls, prefix + ".").items():
      out.setdefault(path, text)
  for path, text in meanings(base.get_config).items():
    out.setdefault(path, text)
  for section, builder in _builders().items():
    for path, text in meanings(builder, section + ".").items():
      out.setdefault(path, text)
  return out


def _dataclasses() -> list[tuple[type, str]]:
  """(dataclass, its section path) for config.model and its nested dataclass fields, in declaration order."""
  out = [(ModelConfig, "model")]
  for f in dataclasses.fields(ModelConfig):
    nested = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
    if dataclasses.is_dataclass(nested):
      out.append((type(nested), f"model.{f.name}"))
    elif f.name == "rope_scaling":  # Optional[RopeScaling]: the dataclass named in its annotation
      out.append((_annotation_class(ModelConfig, f), f"model.{f.name}"))
  return out


def _annotation_class(cls: type, f: dataclasses.Field) -> type:
  namespace = sys.modules[cls.__module__].__dict__
  return namespace[str(f.type).split("|")[0].strip()]


def _code(value: Any) -> str:
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  return f"`{value!r}`"


def _lookup(cfg: ml_collections.ConfigDict, path: str) -> Any:
  for part in path.split("."):
    cfg = cfg[part]
  return cfg


def _by_mode(configs: dict[str, ml_collections.ConfigDict], path: str) -> str:
  """`v` of pretrain, with '(finetune: `w`; demo: `x`)' for the modes where it differs."""
  values = {m: _lookup(c, path) for m, c in configs.items()}
  first = values[MODES[0]]
  others = [f"{m}: {_code(v)}" for m, v in values.items() if m != MODES[0] and v != first]
  return _code(first) + (f" ({'; '.join(others)})" if others else "")


def _type_name(section: ml_collections.ConfigDict, key: str) -> str:
  value = section[key]
  if isinstance(value, ml_collections.ConfigDict):
    return "dict"
  if value is None:
    return getattr(section.get_ref(key).get_type(), "__name__", "None")
  return type(value).__name__


def _row(path: str, type_name: str, default: str, meaning: str) -> str:
  cells = (f"`{path}`", type_name, default, meaning)
  return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _model_rows(cls: type, section: str, configs: dict, meaning: dict[str, str], set_in_base: set[str]) -> list[str]:
  """One row per dataclass field: its annotation, its default (and what get_config sets where it does)."""
  rows = []
  for f in dataclasses.fields(cls):
    path = f"{section}.{f.name}"
    if f.default is not dataclasses.MISSING:
      default = _code(f.default)
    elif f.default_factory is not dataclasses.MISSING:
      default = f"see `{path}.*`"
    else:
      default = "required (a preset of configs/models.py sets it)"
    if path in set_in_base and any(_lookup(c, path) != f.default for c in configs.values()):
      default += f"; get_config sets {_by_mode(configs, path)}"
    nested_doc = (inspect.getdoc(f.default_factory) or "").split("\n")[0] if f.default_factory is not \
        dataclasses.MISSING else ""
    rows.append(_row(path, str(f.type), default, meaning.get(path, nested_doc)))
  return rows


def _section_order(configs: dict) -> list[str]:
  """Sections (ConfigDicts) in the order get_config builds them; '' is the top level."""
  tree, _ = _parsed(base.get_config)
  order = [""]
  for path, _, _ in _sites(tree):
    head = path.split(".")[0]
    if head not in order and isinstance(configs[MODES[0]].get(head), ml_collections.ConfigDict):
      order.append(head)
  return order + sorted(k for k, v in configs[MODES[0]].items()
                        if isinstance(v, ml_collections.ConfigDict) and k not in order)


def _config_rows(section: str, configs: dict, meaning: dict[str, str], source_order: list[str]) -> list[str]:
  """Rows of a ConfigDict section (nested non-empty sections included), fields in the order they are defined."""
  cfg = _lookup(configs[MODES[0]], section) if section else configs[MODES[0]]
  rank: dict[str, int] = {}
  for i, p in enumerate(source_order):
    rank.setdefault(p, i)
  rows = []
  prefix = section + "." if section else ""
  for key in sorted(cfg.keys(), key=lambda k: (rank.get(prefix + k, len(rank)), k)):
    value = cfg[key]
    if isinstance(value, ml_collections.ConfigDict) and len(value):
      if section:  # a sub-section (the top level's sections have their own tables)
        rows += _config_rows(prefix + key, configs, meaning, source_order)
      continue
    rows.append(_row(prefix + key, _type_name(cfg, key), _by_mode(configs, prefix + key),
                     meaning.get(prefix + key, "")))
  return rows


def _source_order() -> list[str]:
  """Field paths in the order their definitions appear (get_config's, then each section builder's)."""
  tree, _ = _parsed(base.get_config)
  order = [p for p, _, _ in _sites(tree)]
  for section, builder in _builders().items():
    order += [f"{section}.{p}" for p, _, _ in _sites(_parsed(builder)[0])]
  return order


def table() -> str:
  """docs/config.md's text."""
  configs = {m: base.get_config(*PRESET, mode=m) for m in MODES}
  meaning = _all_meanings()
  tree, _ = _parsed(base.get_config)
  set_in_base = {p for p, _, _ in _sites(tree) if p.startswith("model.")}
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
  order = _source_order()
  for section in _section_order(configs):
    if section == "model":
      for cls, path in _dataclasses():
        out += ["", f"## config.{path}", "", (inspect.getdoc(cls) or "").split("\n")[0], "", *header]
        out += _model_rows(cls, path, configs, meaning, set_in_base)
      continue
    title = f"config.{section}" if section else "config (top level)"
    out += ["", f"## {title}", ""] + ([meaning[section], ""] if meaning.get(section) else []) + header
    out += _config_rows(section, configs, meaning, order)
  return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
  """Prints docs/config.md's text (no arguments)."""
  cli_errors.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
  sys.stdout.write(table())
  return 0


if __name__ == "__main__":
  cli_errors.run_argv(main)
