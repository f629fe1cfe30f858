"""Zero-shot resolution extrapolation: sample a trained model on a larger token grid.

RandAR (Pang et al. 2025) claims that a random-order model with 2D RoPE generates at resolutions
it never saw in training, because nothing in it is tied to the grid size: positions enter only
through rotary tables, which extend to any (row, column). The same holds for every arjax model
whose parameters do not depend on the grid (2D RoPE, no learned position table). This module
rebuilds the model for another grid, checks that the trained parameters fit it unchanged (a
model with grid-sized tables is refused, naming them), and samples it with the sampler its
order needs; given cells (`known`/`given`, e.g. the trained-size image in a corner) are kept
exactly, which turns it into outpainting.

Legend: B batch, R resolution (grid side), N = R * R tokens.
"""
from __future__ import annotations

import inspect
from typing import Dict, Tuple

import jax
import numpy as np

from arjax.models import build_model
from arjax.sampling.base import build_sampler
from arjax.core.functional import FunctionalModel


def config_at_resolution(config, resolution: int):
  """A copy of `config` whose tokenizer has a `resolution` x `resolution` token grid."""
  config = config.copy_and_resolve_references()
  tok = config.tokenizer
  if tok.name == "pixel":
    tok.resolution = int(resolution)
  elif tok.name == "cached":
    tok.grid = int(resolution)
  else:
    raise ValueError(f"resolution extrapolation: tokenizer.name={tok.name!r} has no grid "
                     "setting to change (supported: 'pixel', 'cached')")
  return config


def _shapes(tree) -> Dict[str, Tuple[int, ...]]:
  return {jax.tree_util.keystr(p): tuple(np.shape(v))
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def model_at_resolution(config, params, resolution: int):
  """(config, FunctionalModel) for the larger grid; the trained `params` must fit it as they are."""
  if config.model.get("backbone", {}).get("position", "rope2d") == "learned":
    raise ValueError(f"model.backbone.position='learned' cannot extrapolate to resolution "
                     f"{resolution}: its position table has no rows for the new cells "
                     "(extrapolation needs model.backbone.position='rope2d')")
  big = config_at_resolution(config, resolution)
  fm = FunctionalModel.abstract(lambda: build_model(big, seed=big.seed))
  # `params` as Experiment.eval_params gives them: any model state merged in.
  trained = _shapes(params)
  needed = _shapes(fm.merge_model_state(fm.abstract_params, fm.abstract_model_state))
  differ = [f"{k}: trained {trained.get(k)}, at resolution {resolution} {needed.get(k)}"
            for k in sorted(set(trained) | set(needed)) if trained.get(k) != needed.get(k)]
  if differ:
    raise ValueError(
        f"model.name={config.model.name!r} with order {config.order.name!r} cannot extrapolate "
        f"to resolution {resolution}: parameters depend on the grid size ("
        + "; ".join(differ[:4]) + "). Extrapolation needs positions from RoPE only "
        "(model.backbone.position='rope2d', no learned or target-aware tables).")
  return big, fm


def sample_at_resolution(config, params, resolution: int, labels, rng, sampling,
                         known=None, given=None):
  """int32 tokens [B, resolution**2] sampled by the trained `params` on the larger grid."""
  big, fm = model_at_resolution(config, params, resolution)
  sampler = build_sampler(fm, sampling, big)
  if known is None and given is None:
    return sampler.sample_tokens(params, labels, rng)
  if "known" not in inspect.signature(sampler.sample_tokens).parameters:
    raise ValueError(f"the sampler of order {big.order.name!r} ({type(sampler).__name__}) "
                     "takes no given cells")
  return sampler.sample_tokens(params, labels, rng, known=known, given=given)
