"""What every entry point shares: a user's mistake is one line, an internal error a traceback.

`run(main, argv)` calls an entry point's `main(argv)`. A user-input error (a ValueError, KeyError
or file error raised while checking what was typed: a config field, an option, a path) prints
`error: <message>` on stderr and exits 2, with no traceback; `--debug` on the command line (or
ARJAX_DEBUG=1 in the environment) shows the traceback instead. Every other exception keeps its
traceback (an internal error). `ArgumentParser` reports a bad option the same way: one line.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, List, Optional, Sequence

# What checking a user's input raises (arjax's checks raise these with the field, file or shape
# named); anything else is an internal error and keeps its traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError)
DEBUG_FLAG = "--debug"
DEBUG_ENV = "ARJAX_DEBUG"


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose errors are one line (`error: --num: invalid int value: 'x'`), exit 2; the
  usage text is what --help prints."""

  def error(self, message: str):
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(2)


CONFIG_HELP = ("experiment config file[:args]; then --config.FIELD=VALUE (or --config.FIELD VALUE) "
               "overrides any field, parsed by ml_collections.config_flags")


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str],
                      required: bool = True):
  """An entry point's arguments: `--config FILE[:ARGS]` with its `--config.FIELD=VALUE`
  overrides through ml_collections.config_flags (arjax.config.parse_config_flags: the parts'
  defaults completed first, every field checked), the rest through `parser` (which should declare
  `--config` with CONFIG_HELP, for --help). Returns (argparse namespace, the locked config or
  None when not required and not given). `--help` is answered before the config is loaded."""
  from arjax.config import parse_config_flags
  argv = list(argv)
  if "-h" in argv or "--help" in argv:
    parser.parse_args(argv)  # prints the usage and exits.
  config, spec, rest = parse_config_flags(argv)
  args = parser.parse_args(rest)
  if config is None and required:
    parser.error("the following arguments are required: --config")
  args.config = spec
  return args, config


def check_sampling_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """The sampling options given on the command line (--cfg_scale, --temperature, --top_k,
  --top_p, the speculative --window, --gsd_radius, --gsd_tol, --max_tries; None: not given) checked by SamplingConfig's rules (NaN, ranges) before anything is
  loaded; a bad one is `parser.error`, one line naming the option."""
  from arjax.sampling.config import SamplingConfig
  given = {k: getattr(args, k) for k in ("cfg_scale", "temperature", "top_k", "top_p",
                                         "window", "gsd_radius", "gsd_tol", "max_tries")
           if getattr(args, k, None) is not None}
  try:
    SamplingConfig(**given).validate()
  except ValueError as err:
    parser.error(f"--{err}")


def message(err: BaseException) -> str:
  """The exception's text on one line (a KeyError's str() adds quotes; newlines folded)."""
  text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
  text = str(text) or type(err).__name__
  if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
    text = f"{text}: {err.filename}"
  return " ".join(text.split())


def debug_requested(argv: Sequence[str]) -> bool:
  return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run(main: Callable[[List[str]], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
  """main(argv without --debug) -> its exit code; a user error -> one line and 2."""
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = debug_requested(argv)
  argv = [a for a in argv if a != DEBUG_FLAG]
  try:
    return main(argv) or 0
  except USER_ERRORS as err:
    if debug:
      raise
    print(f"error: {message(err)}", file=sys.stderr, flush=True)
    return 2
