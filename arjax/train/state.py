"""The train state: everything a checkpoint holds besides the data iterator."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class TrainState:
  step: jax.Array            # int32 scalar: optimizer steps taken.
  params: Any                # nested dict of parameters (float32).
  opt_state: Any             # optax state mirroring params.
  ema_params: Any            # EMA of params, or {} when ema_decay == 0.
  model_state: Any           # nested dict of non-parameter variables the forward pass updates
                             # (VQ EMA codebook, BatchStat), or {} for a model without any.
  rng: jax.Array             # uint32 [2]: base key; step keys are fold_in(rng, step).
  nonfinite: jax.Array       # int32 scalar: consecutive rejected (non-finite) steps.
  rejected: jax.Array        # int32 scalar: rejected steps in total.


def initial_state(params, tx, seed: int, ema: bool, model_state=None) -> TrainState:
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
      ema_params=jax.tree.map(jnp.copy, params) if ema else {},
      model_state=model_state or {},
      rng=jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32),
      nonfinite=jnp.zeros((), jnp.int32), rejected=jnp.zeros((), jnp.int32))
