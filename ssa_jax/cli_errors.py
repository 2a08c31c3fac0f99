"""Command-line entry points that report user mistakes as one line (`error: ...`, exit 2), not a traceback.

What counts as a user mistake: a flag that does not parse, a config file that does not exist or does not
load, a misspelled `--config.a.b` field (ml_collections' "Did you mean" suggestion is kept), and the error
types the entry point names (ConfigError and the like) raised by main. `--verbosity=1` shows the full
traceback instead. Ctrl-C outside a training loop's own handling prints `interrupted` and exits 130.
"""

from __future__ import annotations

import difflib
import os
import sys
from typing import Callable, NoReturn, Sequence

from absl import app, flags
from ml_collections import config_flags

from ssa_jax.config import ConfigError

USAGE_EXIT_CODE = 2


class _UserError(Exception):
  """A mistake already described in one line."""


def _verbose_in_argv(argv: Sequence[str]) -> bool:
  """--verbosity=N / -v N and friends with N >= 1, read from the raw arguments (when parsing itself failed)."""
  names = ("--verbosity", "-verbosity", "--v", "-v")
  for i, arg in enumerate(argv):
    name, eq, value = arg.partition("=")
    if name not in names:
      continue
    if not eq and i + 1 < len(argv):
      value = argv[i + 1]
    try:
      return int(value) >= 1
    except ValueError:
      return False
  return False


def _verbose(argv: Sequence[str]) -> bool:
  try:
    return flags.FLAGS.is_parsed() and flags.FLAGS.verbosity >= 1
  except Exception:  # pylint: disable=broad-except
    return _verbose_in_argv(argv)


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
    near = []
    if os.path.isdir(folder):
      names = sorted(n for n in os.listdir(folder) if n.endswith(".py") and not n.startswith("_"))
      near = difflib.get_close_matches(os.path.basename(path), names, n=3)
    hint = f"; did you mean {', '.join(os.path.join(folder, n) for n in near)}?" if near else ""
    return f"--{flag_name}: config file {path} does not exist{hint}"
  root = _chain(e)[-1]
  return f"--{flag_name}: {path} failed to load: {type(root).__name__}: {_one_line(root)}"


def _override_message(e: BaseException, argv: Sequence[str], config_flag_names: Sequence[str]) -> str | None:
  """A misspelled `--config.a.b=...` field: ml_collections raises a KeyError carrying 'Did you mean'."""
  for err in _chain(e):
    if not isinstance(err, KeyError) or not err.args or not isinstance(err.args[0], str):
      continue
    key, _, suggestion = err.args[0].partition("\n")
    key = key.strip("'\"")
    for arg in argv:
      name = arg.lstrip("-").partition("=")[0]
      head, _, path = name.partition(".")
      if head in config_flag_names and key in path.split("."):
        section = ".".join([head] + path.split(".")[:path.split(".").index(key)])
        return f"--{name}: {section} has no field {key!r}" + (f"; {_one_line(suggestion)}" if suggestion else "")
  return None


def _describe_parse_error(e: BaseException, argv: Sequence[str], config_flag_names: Sequence[str]) -> str:
  for err in _chain(e):
    if isinstance(err, ConfigError):
      return _one_line(err)
  message = _override_message(e, argv, config_flag_names)
  if message:
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


def run(main: Callable[[list[str]], object], user_errors: tuple[type[BaseException], ...] = (ConfigError,),
        config_flag_names: Sequence[str] = ("config",)) -> None:
  """app.run(main), with flag / config-file mistakes and `user_errors` raised by main as one line, exit 2."""

  def parse(argv: list[str]) -> list[str]:
    try:
      rest = flags.FLAGS(argv)
      for name in config_flag_names:
        try:
          # Config files load lazily (a failed load raises at first use): surface a missing or broken one now.
          getattr(getattr(flags.FLAGS, name), "keys")
        except Exception as e:  # pylint: disable=broad-except
          if _verbose(argv):
            raise
          raise _UserError(_config_file_message(name, e)) from e
      return rest
    except _UserError as e:
      fail(str(e))
    except Exception as e:  # pylint: disable=broad-except
      if _verbose_in_argv(argv):
        raise
      fail(_describe_parse_error(e, argv, config_flag_names))
    raise AssertionError("unreachable")

  def guarded_main(argv: list[str]):
    try:
      return main(argv)
    except user_errors as e:
      if _verbose(argv):
        raise
      fail(_one_line(e))
    except KeyboardInterrupt:
      if _verbose(argv):
        raise
      print("interrupted", file=sys.stderr, flush=True)
      sys.exit(130)

  app.run(guarded_main, flags_parser=parse)
