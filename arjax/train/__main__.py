"""python -m arjax.train --config configs/NAME.py[:ARGS] --workdir DIR [--config.FIELD=VALUE ...]"""
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:args]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and samples")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  # Orbax and grain log every save at INFO through absl; keep arjax's own progress lines.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("arjax").setLevel(logging.INFO)
  from arjax.train.checkpoint import CheckpointCorruptError, CheckpointSaveError
  from arjax.train.lock import WorkdirLockedError
  from arjax.train.loop import train_and_evaluate
  try:
    results = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
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
  app.run(main)
