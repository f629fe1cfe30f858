"""The jitted, pure train and eval steps.

A step whose loss or gradient norm is not finite is rejected: parameters, optimizer state and
EMA stay unchanged, the rejection is counted, and no NaN can reach a checkpoint.
"""
# (no `from __future__ import annotations`: clu reads the metric annotations at runtime)

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics
from flax import struct

from arjax.train.functional import FunctionalModel
from arjax.train.state import TrainState


@struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  bits_per_dim: clu_metrics.Average.from_output("bits_per_dim")
  accuracy: clu_metrics.Average.from_output("accuracy")
  grad_norm: clu_metrics.Average.from_output("grad_norm")
  learning_rate: clu_metrics.LastValue.from_output("learning_rate")
  rejected_steps: clu_metrics.LastValue.from_output("rejected_steps")


def step_key(state: TrainState):
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def make_train_step(fm: FunctionalModel, tx: optax.GradientTransformation, schedule,
                    ema_decay: float):

  def train_step(state: TrainState, batch: Dict[str, jax.Array]
                 ) -> Tuple[TrainState, TrainMetrics]:
    rng = step_key(state)

    def loss_fn(params):
      loss, metrics = fm.bind(params, rng).loss(batch, train=True)
      return loss, metrics

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree_utils.tree_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    params = keep(params, state.params)
    opt_state = keep(opt_state, state.opt_state)
    ema = state.ema_params
    if ema_decay > 0:
      ema = jax.tree.map(lambda e, p: jnp.where(finite, ema_decay * e + (1 - ema_decay) * p, e),
                         ema, params)
    nonfinite = jnp.where(finite, 0, state.nonfinite + 1)
    rejected = state.rejected + (~finite).astype(jnp.int32)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema, nonfinite=nonfinite, rejected=rejected)
    out = TrainMetrics.single_from_model_output(
        loss=jnp.where(finite, metrics["loss"], 0.0),
        bits_per_dim=jnp.where(finite, metrics["bits_per_dim"], 0.0),
        accuracy=metrics["accuracy"], grad_norm=jnp.where(finite, grad_norm, 0.0),
        learning_rate=schedule(state.step), rejected_steps=rejected)
    return new_state, out

  return train_step


def make_eval_step(fm: FunctionalModel):
  """(params, batch) -> (sum of token NLL in nats, number of tokens) over real examples."""

  def eval_step(params, batch):
    _, metrics = fm.bind(params).loss(batch, train=False)
    return metrics["nll"] * metrics["num_tokens"], metrics["num_tokens"]

  return eval_step
