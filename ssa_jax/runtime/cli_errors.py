"""Command-line entry points that report user mistakes (a bad flag or config file, a misspelled `--config.a.b`
field, an error type the entry point names) as one `error: ...` line, exit 2, not a traceback (`--verbosity=1`
shows it). absl entry points go through `run`, argparse ones through `ArgumentParser` and `run_argv`."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import glob
import logging
import os
import sys
from typing import Callable, Iterator, NoReturn, Sequence

from absl import app, flags
from ml_collections import config_flags

from ssa_jax.errors import ConfigError

USAGE_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130
# What a missing or wrong path, a bad value or a missing tensor raise in the argparse entry points (ConfigError
# and checkpoint.NotACheckpointError are among them); anything else is a bug and keeps its traceback.
PATH_AND_VALUE_ERRORS = (ValueError, KeyError, OSError)


class UsageError(Exception):
  """A command-line mistake (a missing argument, two that exclude each other), described in one line."""


def _module_prog() -> str | None:
  """`python -m ssa_jax.x.y` for a module run with -m (argparse would say `y.py`); None otherwise."""
  spec = getattr(sys.modules["__main__"], "__spec__", None)  # None for a script, set by `python -m`
  return f"python -m {spec.name}" if spec is not None and spec.name.startswith("ssa_jax.") else None


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose mistakes raise UsageError (one line via `run_argv`, not usage + error), with --verbosity."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("prog", _module_prog())
    super().__init__(*args, **kwargs)
    self.add_argument("--verbosity", type=int, default=0, help="1: show the traceback of an error")

  def error(self, message):
    raise UsageError(f"{self.prog}: {message} (see --help)")


class _PlainLineFormatter(logging.Formatter):
  """A project log record as one plain line: `warning: ...` (`error: ...`), INFO bare."""

  def format(self, record: logging.LogRecord) -> str:
    text = record.getMessage()
    return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


@contextlib.contextmanager
def plain_project_logging() -> Iterator[None]:
  """Within: the project's loggers (`ssa_jax.*`) print `warning: ...` lines, not absl's `W1206 12:00:00.000 123
  packing.py:227] ...`, at the level --verbosity sets; restored after (an entry point run in-process, by tests)."""
  logger = logging.getLogger("ssa_jax")
  handler, propagate = logging.StreamHandler(sys.stderr), logger.propagate
  handler.setFormatter(_PlainLineFormatter())
  logger.addHandler(handler)
  logger.propagate = False  # absl's handler sits on the root logger
  try:
    yield
  finally:
    logger.removeHandler(handler)
    logger.propagate = propagate


def verbose_in_argv(argv: Sequence[str]) -> bool:
  """--verbosity=N / -v N and friends with N >= 1, read from the raw arguments (when parsing itself failed)."""
  for i, arg in enumerate(argv):
    name, eq, value = arg.partition("=")
    if name in ("--verbosity", "-verbosity", "--v", "-v"):
      try:
        return int(value if eq or i + 1 == len(argv) else argv[i + 1]) >= 1
      except ValueError:
        return False
  return False


def _chain(e: BaseException):
  """e and the exceptions it was raised from or during, outermost first."""
  seen = []
  while e is not None and e not in seen:
    seen.append(e)
    e = e.__cause__ or e.__context__
  return seen


def _one_line(text: str) -> str:
  return " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def _config_file_message(flag_name: str, e: BaseException) -> str:
  """A config file that could not be loaded: missing (with near names), or its own error."""
  path = config_flags.get_config_filename(flags.FLAGS[flag_name])
  if not os.path.exists(path):
    folder = os.path.dirname(path) or "."
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(folder), "[!_]*.py")))
    near = difflib.get_close_matches(os.path.basename(path), names, n=3)
    hint = f"; did you mean {', '.join(os.path.join(folder, n) for n in near)}?" if near else ""
    return f"--{flag_name}: config file {path} does not exist{hint}"
  root = _chain(e)[-1]
  return f"--{flag_name}: {path} failed to load: {type(root).__name__}: {_one_line(root)}"


def _config_lacks(head: str, config_file: str | None, path: list[str]) -> bool:
  """Whether `config_file` of flag --head lacks the field at `path` (['model', 'x']); False if it does not load."""
  try:
    config = flags.FLAGS[head].parser.parse(config_file)
  except Exception:  # pylint: disable=broad-except
    return False
  try:
    functools.reduce(lambda node, part: node[part], path, config)
  except (KeyError, TypeError):  # TypeError: a leaf (int, str, ...) where the path goes on
    return True
  return False


def _override_message(e: BaseException, argv: Sequence[str], config_flag_names: Sequence[str]) -> str | None:
  """A misspelled `--config.a.b=...` field: ml_collections raises a KeyError carrying 'Did you mean'."""
  given = dict(arg.lstrip("-").partition("=")[::2] for arg in argv)  # flag name -> value
  for err in _chain(e):
    if not isinstance(err, KeyError) or not err.args or not isinstance(err.args[0], str):
      continue
    key, _, suggestion = err.args[0].partition("\n")
    key = key.strip("'\"")
    overrides = [(name, *name.partition(".")[::2]) for name in given]  # (flag name, config flag, field path)
    candidates = [(name, head, path.split(".")) for name, head, path in overrides
                  if head in config_flag_names and key in path.split(".")]
    if len(candidates) > 1:
      # Several overrides name the key (--config.model.num_layers, --config.train.num_layers): blame the one
      # whose field the config lacks, not the first.
      candidates = [c for c in candidates if _config_lacks(c[1], given.get(c[1]), c[2])] or candidates
    if candidates:
      name, head, path = candidates[0]
      section = ".".join([head] + path[:path.index(key)])
      return f"--{name}: {section} has no field {key!r}" + (f"; {_one_line(suggestion)}" if suggestion else "")
  return None


def _describe_parse_error(e: BaseException, argv: Sequence[str], config_flag_names: Sequence[str]) -> str:
  for err in _chain(e):
    if isinstance(err, ConfigError):
      return _one_line(err)
  if message := _override_message(e, argv, config_flag_names):
    return message
  if isinstance(e, flags.Error):
    text = str(e)
    if "Traceback (most recent call last)" in text:
      # A config file's get_config raised: ml_collections embeds the whole traceback; its last line says what.
      lines = [l for l in text.splitlines() if l.strip()]
      return f"{text.split(': ', 1)[0]}: the config file raised {lines[-1].strip()}"
    return _one_line(e)
  return f"{type(e).__name__}: {_one_line(e)}"


def fail(message: str) -> NoReturn:
  """Prints `error: message` to stderr and exits with USAGE_EXIT_CODE."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(USAGE_EXIT_CODE)


def message_of(e: BaseException) -> str:
  """The one-line message of a user error (a KeyError's without its repr quotes)."""
  return _one_line(e.args[0] if isinstance(e, KeyError) and e.args else e)


def _call_main(main: Callable[[list[str]], object], argv: list[str],
               user_errors: tuple[type[BaseException], ...], verbose: bool) -> object:
  """main(argv), with UsageError and `user_errors` as one `error:` line and exit 2, Ctrl-C as `interrupted` and
  130; `verbose` re-raises instead (the traceback)."""
  try:
    return main(argv)
  except (UsageError, KeyboardInterrupt, *user_errors) as e:
    if verbose:
      raise
    if isinstance(e, KeyboardInterrupt):
      print("interrupted", file=sys.stderr, flush=True)
      sys.exit(INTERRUPTED_EXIT_CODE)
    fail(message_of(e))


def run_argv(main: Callable[[list[str]], object], argv: Sequence[str] | None = None,
             user_errors: tuple[type[BaseException], ...] = PATH_AND_VALUE_ERRORS) -> NoReturn:
  """Exits with main(argv) (argv: sys.argv[1:]) of an argparse entry point, as `_call_main` says; an int that
  main returns is the exit code, anything else exits 0."""
  argv = list(sys.argv[1:] if argv is None else argv)
  with plain_project_logging():
    result = _call_main(main, argv, user_errors, verbose_in_argv(argv))
  sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)


def run(main: Callable[[list[str]], object], user_errors: tuple[type[BaseException], ...] = (ConfigError,),
        config_flag_names: Sequence[str] = ("config",)) -> None:
  """app.run(main), with flag / config-file mistakes and `user_errors` raised by main as one line, exit 2."""

  def parse(argv: list[str]) -> list[str]:
    try:
      rest = flags.FLAGS(argv)
    except Exception as e:  # pylint: disable=broad-except
      if verbose_in_argv(argv):
        raise
      fail(_describe_parse_error(e, argv, config_flag_names))
    for name in config_flag_names:
      if flags.FLAGS[name].default is None and not flags.FLAGS[name].present:
        continue  # an optional --config that was not given
      try:
        # Config files load lazily (a failed load raises at first use): surface a missing or broken one now.
        getattr(getattr(flags.FLAGS, name), "keys")
      except Exception as e:  # pylint: disable=broad-except
        if flags.FLAGS.verbosity >= 1:
          raise
        fail(_config_file_message(name, e))
    return rest

  with plain_project_logging():
    app.run(lambda argv: _call_main(main, argv, user_errors, flags.FLAGS.verbosity >= 1), flags_parser=parse)
