"""arjax: one codebase for autoregressive generative models in JAX/Flax.

A generator is five swappable parts (see DESIGN.md):
tokenizer -> order -> backbone -> head -> sampler.

`arjax.load(workdir)` -> (FunctionalModel, variables, config) restores a trained run for
inference (parameters and model state only; arjax.loading). Importing `arjax` imports nothing
else: every part is imported from its own module.
"""
__version__ = "0.1.0"


def load(workdir: str, step=None, **kwargs):
  """(FunctionalModel, variables, config) of the run in `workdir` at checkpoint `step` (latest:
  None), without the trainer or an optimizer; see `arjax.loading.load`."""
  from arjax.loading import load as _load
  return _load(workdir, step, **kwargs)
