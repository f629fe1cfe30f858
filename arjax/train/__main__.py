"""python -m arjax.train --config configs/NAME.py[:ARGS] --workdir DIR [--config.FIELD=VALUE ...]

The config is loaded by `arjax.config.load_config`: the parts' nodes are completed with their
declared defaults, then the `--config.FIELD=VALUE` overrides are applied (checked: an unknown
field or a value of the wrong type fails at start, naming the field). A mistake in what was
typed is one line `error: ...` and exit 2 (`--debug` shows the traceback; arjax.cli).
"""
import argparse
import logging
import sys
from typing import List, Tuple

from absl import flags
from absl import logging as absl_logging

from arjax import cli

_PREFIX = "--config."


def parse_args(argv: List[str]) -> Tuple[object, List[str]]:
  """(--config, --workdir) and every '--config.FIELD=VALUE' (or '--config.FIELD VALUE') set
  aside as a config override 'FIELD=VALUE'."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(_PREFIX):
      item = arg[len(_PREFIX):]
      if "=" not in item:
        if i + 1 >= len(argv):
          raise ValueError(f"{arg} has no value: write {arg}=VALUE")
        item, i = f"{item}={argv[i + 1]}", i + 1
      overrides.append(item)
    else:
      rest.append(arg)
    i += 1
  p = cli.ArgumentParser(prog="python -m arjax.train", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="experiment config file[:args]")
  p.add_argument("--workdir", required=True,
                 help="directory for checkpoints, metrics and samples")
  return p.parse_args(rest), overrides


def main(argv: List[str]) -> int:
  args, overrides = parse_args(argv)
  # absl's log format for arjax's progress lines; Orbax and grain log every save at INFO through
  # absl, so only warnings from them. Grain's workers read absl flags: mark them parsed.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  absl_logging.use_absl_handler()
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("arjax").setLevel(logging.INFO)
  from arjax.config import load_config
  config = load_config(args.config, overrides)
  from arjax.train.checkpoint import CheckpointCorruptError, CheckpointSaveError
  from arjax.train.lock import WorkdirLockedError
  from arjax.train.loop import train_and_evaluate
  try:
    results = train_and_evaluate(config, args.workdir)
  except WorkdirLockedError as e:  # another trainer runs there: nothing was touched.
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  except (CheckpointSaveError, CheckpointCorruptError) as e:  # one line naming the directory.
    # A failed save's other pending writes are logged again by asyncio ("exception was never
    # retrieved") when the interpreter collects them at exit: the line below already said it.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 1
  print({k: v for k, v in results.items()})
  return 0


if __name__ == "__main__":
  sys.exit(cli.run(main))
