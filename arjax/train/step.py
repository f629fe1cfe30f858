"""The jitted, pure train and eval steps.

A step whose loss or gradient norm is not finite is rejected: parameters, optimizer state, EMA
and model state stay unchanged, the rejection is counted, and no NaN can reach a checkpoint.

Model state (`TrainState.model_state`: the VQ EMA codebook and its statistics, any BatchStat)
is what the forward pass with train=True leaves in the module's non-parameter variables; it
comes out of the loss function as auxiliary output, never differentiated, and the optimizer
never sees it.

Gradient accumulation (`train.grad_accum_steps` = k > 1): the batch is cut into k micro-batches
inside the jitted step (row j goes to micro-batch j mod k, so each device's shard of a
data-parallel batch feeds every micro-batch), a `lax.scan` computes each one's loss and
gradient, and the update uses their mean: for a loss that is a mean over equally sized
micro-batches this is the gradient of the whole batch, at 1/k of the activation memory. Model
state (VQ EMA statistics) is carried from one micro-batch to the next; micro-batch i draws its
randomness from the step key folded with i.
"""
# (no `from __future__ import annotations`: clu reads the metric annotations at runtime)

import functools
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics

from arjax.core.functional import FunctionalModel
from arjax.train.optim import with_learning_rate
from arjax.train.state import TrainState


LAST_VALUE_METRICS = ("learning_rate", "rejected_steps")


@functools.lru_cache(maxsize=None)
def metrics_collection(names: Tuple[str, ...]):
  """A clu Collection class averaging each model metric; last values for the schedule/counters."""
  fields = {n: clu_metrics.Average for n in names}
  fields.update({n: clu_metrics.LastValue for n in LAST_VALUE_METRICS})
  return clu_metrics.Collection.create(**fields)


def collect(metrics: Dict[str, jax.Array], finite, learning_rate, rejected):
  """Step metrics as a clu Collection; a rejected (non-finite) step adds nothing to averages."""
  names = tuple(sorted(k for k in metrics if k != "num_tokens"))
  cls = metrics_collection(names)
  count = finite.astype(jnp.int32)
  avg = {k: clu_metrics.Average(total=jnp.where(finite, metrics[k], 0.0).astype(jnp.float32),
                                count=count) for k in names}
  last = {"learning_rate": clu_metrics.LastValue.from_model_output(jnp.asarray(learning_rate)),
          "rejected_steps": clu_metrics.LastValue.from_model_output(
              rejected.astype(jnp.float32))}
  return cls(_reduction_counter=clu_metrics._ReductionCounter(jnp.array(1, jnp.int32)),
             **avg, **last)


def step_key(state: TrainState):
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def split_micro_batches(batch: Dict[str, jax.Array], k: int) -> Dict[str, jax.Array]:
  """[B, ...] arrays -> [k, B / k, ...]; row j of the batch goes to micro-batch j mod k."""
  def split(name, x):
    if x.ndim == 0 or x.shape[0] % k:
      raise ValueError(f"train.grad_accum_steps={k} does not divide the batch: batch[{name!r}] "
                       f"has shape {x.shape}; train.batch_size must be a multiple of {k}")
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
  return {name: split(name, x) for name, x in batch.items()}


def make_train_step(fm: FunctionalModel, tx: optax.GradientTransformation, schedule,
                    ema_decay: float, grad_accum_steps: int = 1):
  if not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
    raise ValueError(f"train.grad_accum_steps={grad_accum_steps!r}; expected an integer >= 1")
  k = grad_accum_steps

  def grads_of(params, batch, rng, model_state):
    def loss_fn(params):
      model = fm.bind(params, rng, model_state)
      loss, metrics = model.loss(batch, train=True)
      return loss, (metrics, jax.lax.stop_gradient(fm.model_state_of(model)))
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  def accumulated(params, batch, rng, model_state, step):
    micro = split_micro_batches(batch, k)

    def body(carry, xs):
      grads, model_state = carry
      i, mb = xs
      (loss, (metrics, model_state)), g = grads_of(params, dict(mb, step=step),
                                                   jax.random.fold_in(rng, i), model_state)
      grads = jax.tree.map(lambda a, b: a + b.astype(a.dtype), grads, g)
      return (grads, model_state), (loss, metrics)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.result_type(p.dtype, jnp.float32)),
                         params)
    (grads, model_state), (losses, metrics) = jax.lax.scan(
        body, (zeros, model_state), (jnp.arange(k), micro))
    grads = jax.tree.map(lambda g, p: (g / k).astype(p.dtype), grads, params)
    # Means over micro-batches, except token counts, which add up.
    metrics = {name: (m.sum(0) if name == "num_tokens" else m.mean(0))
               for name, m in metrics.items()}
    return (losses.mean(), (metrics, model_state)), grads

  def train_step(state: TrainState, batch: Dict[str, jax.Array]
                 ) -> Tuple[TrainState, Any]:
    rng = step_key(state)
    if k == 1:
      # Models that schedule something over training (RAR's order annealing) read batch['step'].
      (loss, (metrics, model_state)), grads = grads_of(
          state.params, dict(batch, step=state.step), rng, state.model_state)
    else:
      (loss, (metrics, model_state)), grads = accumulated(
          state.params, batch, rng, state.model_state, state.step)
    grad_norm = optax.tree_utils.tree_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # The rate applied is the rate logged: both are schedule(state.step), rejected steps or not.
    learning_rate = schedule(state.step)
    updates, opt_state = tx.update(grads, with_learning_rate(state.opt_state, learning_rate),
                                   state.params)
    params = optax.apply_updates(state.params, updates)
    # [scale] Finite gradients can still give a non-finite update (lr=inf, overflow in the
    # optimizer): reject those steps too, so no NaN/Inf reaches the parameters or a checkpoint.
    new = jax.tree.leaves(params) + [x for x in jax.tree.leaves(model_state)
                                     if jnp.issubdtype(x.dtype, jnp.inexact)]
    finite = finite & jnp.all(jnp.stack([jnp.isfinite(p).all() for p in new]))
    # One conditional, not a select per leaf: with per-leaf selects on a predicate computed from
    # every new parameter, XLA's CPU compiler took minutes on conv tokenizers (48s vs 260s).
    params, opt_state, model_state = jax.lax.cond(
        finite, lambda: (params, opt_state, model_state),
        lambda: (state.params, state.opt_state, state.model_state))
    ema = state.ema_params
    if ema_decay > 0:
      ema = jax.tree.map(lambda e, p: jnp.where(finite, ema_decay * e + (1 - ema_decay) * p, e),
                         ema, params)
    nonfinite = jnp.where(finite, 0, state.nonfinite + 1)
    rejected = state.rejected + (~finite).astype(jnp.int32)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema, model_state=model_state, nonfinite=nonfinite,
                              rejected=rejected)
    # Parameter and update norms next to the gradient norm (the update of a rejected step is
    # the one that was not applied; averages skip rejected steps).
    norms = dict(grad_norm=grad_norm, param_norm=optax.tree_utils.tree_norm(params),
                 update_norm=optax.tree_utils.tree_norm(updates))
    out = collect(dict(metrics, **norms), finite, learning_rate, rejected)
    return new_state, out

  return train_step


def make_eval_step(fm: FunctionalModel):
  """(params, batch) -> (sum of token NLL in nats, number of tokens) over real examples.

  params: `Experiment.eval_params`, parameters with the carried model state merged in."""

  def eval_step(params, batch):
    _, metrics = fm.bind(params).loss(batch, train=False)
    return metrics["nll"] * metrics["num_tokens"], metrics["num_tokens"]

  return eval_step
