"""'spatial_flow': FlowAR's per-scale flow-matching head (Ren et al. 2024), declared here so that
`model.head.name='spatial_flow'` and its fields are checked like every head's.

It is not a per-token head: its velocity network is a small transformer over a whole scale's
tokens whose adaLN modulation comes position-wise from the AR output plus the flow-time
embedding, so model 'flowar' (arjax.models.flowar.SpatialFlowHead) builds it; `build_head` for
any other model refuses it in one line. Time convention: arjax.heads.flow's (t from noise at 0
to data at 1, x_t = t x + (1 - t) eps, v = x - eps), which is FlowAR's.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from arjax.heads.base import HEADS
from arjax.heads.flow import FlowFields


@dataclasses.dataclass(frozen=True)
class SpatialFlowFields(FlowFields):
  """`config.model.head` of model 'flowar': FlowFields' solver, steps and time sampling;
  width = Dh of the head's blocks (0: the AR width), depth = head blocks, num_heads (0: Dh / 64),
  batch_mul = (t, eps) draws per image in the loss."""
  width: int = 0
  depth: int = 2
  batch_mul: int = 1
  num_sampling_steps: int = 25    # FlowAR-S / L: 25 ODE steps per scale (H: 50).
  num_heads: int = 0

  def __post_init__(self):
    if self.width == 0:  # 0 (the AR width) is valid here; FlowFields checks the rest.
      dataclasses.replace(self, width=1)
    else:
      super().__post_init__()
    if isinstance(self.num_heads, bool) or not isinstance(self.num_heads, int) or \
        self.num_heads < 0:
      raise ValueError(f"model.head.num_heads={self.num_heads!r}; expected an integer >= 0")


@HEADS.register("spatial_flow", fields=SpatialFlowFields)
class SpatialFlowOnlyForFlowAR:
  """Refuses to be built by `build_head`: the head belongs to model 'flowar'."""

  token_dtype = jnp.float32   # continuous latents (arjax.heads.base.head_is_continuous).
  only_for_model = "flowar"   # not offered to other models (arjax.heads.base.continuous_heads).
  sample_options = ()

  def __init__(self, dim, tokenizer, fields=None, *, rngs=None, dtype=None):
    raise ValueError("head 'spatial_flow' is FlowAR's per-scale head (a transformer over a whole "
                     "scale): use it with model.name='flowar'")
