"""The config every tests/scale run trains: tests.helpers.tiny_config with one layer.

A config *file* so the in-process runs and the subprocess runs (`arjax.train`, `arjax.launch`)
train exactly the same thing. Six steps, a checkpoint after every step (asynchronous), so a
kill can land in many different places.

`run_config.py:no_grid`: the same run evaluated by test bits/dim alone, without the sample grid
(a sampler compile), for tests that compare only losses, parameters and bits/dim.
"""
import ml_collections

from tests.helpers import tiny_config


def get_config(arg=None):
  c = tiny_config(model__backbone__num_layers=1, train__num_steps=6,
                  train__checkpoint_every=1, train__keep_checkpoints=2,
                  train__async_checkpointing=True)
  if arg == "no_grid":
    c.eval.evaluators = ml_collections.ConfigDict({"bits_per_dim": {}})
  elif arg:
    raise ValueError(f"run_config.py:{arg}; expected no argument or 'no_grid'")
  return c
