"""Optimizers and learning-rate schedules by name (`train.optimizer`, `train.schedule`).

The learning rate is an input of every step, not a count inside the optimizer state: the train
step sets it from `schedule(state.step)` (`with_learning_rate`), through
`optax.inject_hyperparams`. So the rate applied is the rate logged at every step, also after
rejected (non-finite) steps, whose optimizer state is rolled back while `state.step` advances
(with the schedule counting inside optax, the applied rate lagged the logged one by the number
of rejected steps).

Optimizers (OPTIMIZERS): adamw (decoupled weight decay; Llama/LlamaGen), lion (Chen et al. 2023;
b1, b2 and weight decay from train.*), adafactor (factored second moments; train.b1 > 0 adds
momentum; weight decay as optax's decay rate; train.lr an absolute step, not scaled by the
parameters' RMS). Weight decay never applies to norms and other 1-D
parameters. Global-norm clipping (train.grad_clip > 0) comes first.
Schedules (SCHEDULES), all with linear warmup over train.warmup_steps from 0: cosine and linear
decay to lr * end_lr_ratio at train.num_steps, constant, and rsqrt (lr * sqrt(warmup / step)
after warmup: the inverse-square-root decay of big_vision and T5).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from arjax.registry import Registry

OPTIMIZERS: Registry[Callable] = Registry("optimizer")
SCHEDULES: Registry[Callable] = Registry("schedule")


def _warmup(t):
  return max(int(t.warmup_steps), 0)


@SCHEDULES.register("cosine")
def cosine_schedule(t) -> optax.Schedule:
  warmup = _warmup(t)
  decay = max(int(t.num_steps) - warmup, 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else t.lr, peak_value=t.lr, warmup_steps=warmup,
      decay_steps=warmup + decay, end_value=t.lr * t.end_lr_ratio)


def _with_warmup(t, after: optax.Schedule) -> optax.Schedule:
  warmup = _warmup(t)
  if not warmup:
    return after
  return optax.join_schedules(
      [optax.linear_schedule(0.0, t.lr, warmup), lambda n: after(n + warmup)], [warmup])


@SCHEDULES.register("linear")
def linear_schedule(t) -> optax.Schedule:
  decay = max(int(t.num_steps) - _warmup(t), 1)
  return _with_warmup(t, lambda n: optax.linear_schedule(
      t.lr, t.lr * t.end_lr_ratio, decay)(n - _warmup(t)))


@SCHEDULES.register("constant")
def constant_schedule(t) -> optax.Schedule:
  return _with_warmup(t, lambda n: jnp.full((), t.lr, jnp.float32))


@SCHEDULES.register("rsqrt")
def rsqrt_schedule(t) -> optax.Schedule:
  timescale = max(_warmup(t), 1)
  return _with_warmup(t, lambda n: t.lr * jax.lax.rsqrt(
      jnp.maximum(jnp.asarray(n, jnp.float32), timescale) / timescale))


def learning_rate_schedule(t) -> optax.Schedule:
  """step -> learning rate of the schedule `train.schedule`."""
  return SCHEDULES.get(t.get("schedule", "cosine"), "train.schedule")(t)


def _decay_mask(params):
  # No weight decay on norms and 1-D parameters (Llama/LlamaGen practice).
  return jax.tree.map(lambda p: p.ndim >= 2, params)


@OPTIMIZERS.register("adamw")
def adamw(t, learning_rate) -> optax.GradientTransformation:
  return optax.adamw(learning_rate, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay,
                     mask=_decay_mask)


@OPTIMIZERS.register("lion")
def lion(t, learning_rate) -> optax.GradientTransformation:
  return optax.lion(learning_rate, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay,
                    mask=_decay_mask)


@OPTIMIZERS.register("adafactor")
def adafactor(t, learning_rate) -> optax.GradientTransformation:
  # multiply_by_parameter_scale=False: train.lr is an absolute step size, as for the others
  # (Adafactor's relative steps would scale it by each parameter's RMS, tiny at zero init).
  return optax.adafactor(learning_rate, momentum=t.b1 or None, multiply_by_parameter_scale=False,
                         weight_decay_rate=t.weight_decay or None, weight_decay_mask=_decay_mask)


def make_optimizer(t) -> optax.GradientTransformation:
  """Clipping + the optimizer `train.optimizer`, with its learning rate an injected
  hyper-parameter (`with_learning_rate` sets it each step; the state starts at the schedule's
  first value)."""
  build = OPTIMIZERS.get(t.get("optimizer", "adamw"), "train.optimizer")

  def chain(learning_rate):
    parts = []
    if t.grad_clip and t.grad_clip > 0:
      parts.append(optax.clip_by_global_norm(t.grad_clip))
    parts.append(build(t, learning_rate))
    return optax.chain(*parts)

  return optax.inject_hyperparams(chain)(learning_rate=float(learning_rate_schedule(t)(0)))


def with_learning_rate(opt_state, learning_rate):
  """The optimizer state of `make_optimizer` with the rate the next update applies. The state
  of any other optax transformation (its rate its own, e.g. optax.sgd(0.1) in tests) is returned
  as it is."""
  if not hasattr(opt_state, "hyperparams") or "learning_rate" not in opt_state.hyperparams:
    return opt_state
  hyper = dict(opt_state.hyperparams)
  hyper["learning_rate"] = jnp.asarray(learning_rate, hyper["learning_rate"].dtype)
  return opt_state._replace(hyperparams=hyper)


def applied_learning_rate(opt_state) -> jax.Array:
  return opt_state.hyperparams["learning_rate"]
