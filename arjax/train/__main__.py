"""python -m arjax.train --config configs/NAME.py[:ARGS] --workdir DIR [--config.FIELD=VALUE ...]

The config is loaded by `arjax.config.load_config`: the parts' nodes are completed with their
declared defaults, then the `--config.FIELD=VALUE` overrides are applied (checked: an unknown
field or a value of the wrong type fails at start, naming the field).
"""
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging

_CONFIG = flags.DEFINE_string("config", None, "experiment config file[:args]")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and samples")
flags.mark_flags_as_required(["config", "workdir"])

_PREFIX = "--config."


def parse_flags(argv):
  """absl flags, with every '--config.FIELD=VALUE' (or '--config.FIELD VALUE') set aside as a
  config override; returns [program, *overrides]."""
  rest, overrides, i = [argv[0]], [], 1
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(_PREFIX):
      item = arg[len(_PREFIX):]
      if "=" not in item:
        if i + 1 >= len(argv):
          raise app.UsageError(f"{arg} has no value: write {arg}=VALUE")
        item, i = f"{item}={argv[i + 1]}", i + 1
      overrides.append(item)
    else:
      rest.append(arg)
    i += 1
  flags.FLAGS(rest)
  return [argv[0]] + overrides


def main(argv):
  # Orbax and grain log every save at INFO through absl; keep arjax's own progress lines.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("arjax").setLevel(logging.INFO)
  from arjax.config import load_config
  config = load_config(_CONFIG.value, argv[1:])
  from arjax.train.checkpoint import CheckpointCorruptError, CheckpointSaveError
  from arjax.train.lock import WorkdirLockedError
  from arjax.train.loop import train_and_evaluate
  try:
    results = train_and_evaluate(config, _WORKDIR.value)
  except WorkdirLockedError as e:  # another trainer runs there: nothing was touched.
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  except (CheckpointSaveError, CheckpointCorruptError) as e:  # one line naming the directory.
    # A failed save's other pending writes are logged again by asyncio ("exception was never
    # retrieved") when the interpreter collects them at exit: the line below already said it.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  print({k: v for k, v in results.items()})


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
