"""python -m arjax.train --config configs/NAME.py[:ARGS] --workdir DIR [--config.FIELD=VALUE ...]

`--config` and its `--config.FIELD=VALUE` (or `--config.FIELD VALUE`) overrides are parsed by
ml_collections.config_flags (arjax.config.parse_config_flags): the parts' nodes are completed
with their declared defaults first, then the overrides are applied (an unknown field or a value
of the wrong type fails at start, naming the field) and every field is validated. A mistake in
what was typed is one line `error: ...` and exit 2 (`--debug` shows the traceback; arjax.cli).
"""
import argparse
import logging
import sys
from typing import List, Tuple

from absl import flags
from absl import logging as absl_logging

from arjax import cli


def parse_args(argv: List[str]) -> Tuple[object, object]:
  """(the namespace with --config and --workdir, the loaded config): `--config` and its
  `--config.FIELD=VALUE` overrides through ml_collections.config_flags (arjax.cli)."""
  p = cli.ArgumentParser(prog="python -m arjax.train", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", help=cli.CONFIG_HELP)
  p.add_argument("--workdir", required=True,
                 help="directory for checkpoints, metrics and samples")
  return cli.parse_with_config(p, argv)


def main(argv: List[str]) -> int:
  args, config = parse_args(argv)
  # absl's log format for arjax's progress lines; Orbax and grain log every save at INFO through
  # absl, so only warnings from them. Grain's workers read absl flags: mark them parsed.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  absl_logging.use_absl_handler()
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("arjax").setLevel(logging.INFO)
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
