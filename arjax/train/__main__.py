"""python -m arjax.train --config configs/NAME.py[:ARGS] --workdir DIR [--config.FIELD=VALUE ...]"""
import logging

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:args]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and samples")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from arjax.train.loop import train_and_evaluate
  results = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print({k: v for k, v in results.items()})


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
  app.run(main)
