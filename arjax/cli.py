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


def check_sampling_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """The sampling options given on the command line (--cfg_scale, --temperature, --top_k,
  --top_p, the speculative --window, --gsd_radius, --gsd_tol; None: not given) checked by SamplingConfig's rules (NaN, ranges) before anything is
  loaded; a bad one is `parser.error`, one line naming the option."""
  from arjax.sampling.config import SamplingConfig
  given = {k: getattr(args, k) for k in ("cfg_scale", "temperature", "top_k", "top_p",
                                         "window", "gsd_radius", "gsd_tol")
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
