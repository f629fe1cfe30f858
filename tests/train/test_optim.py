"""Optimizers and schedules by name against float64 numpy references, and the learning rate a
step applies after rejected (non-finite) steps: the logged one, schedule(state.step)."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from arjax.config import base_config
from arjax.train import optim
from arjax.train.state import initial_state
from arjax.train.step import make_train_step


def _train(**kw):
  t = ml_collections.ConfigDict(base_config().train.to_dict())
  t.update(kw)
  return t


def _ref_schedule(name, t, n):
  """float64 reference of each schedule at step n (linear warmup from 0 first)."""
  w, lr, end = t.warmup_steps, t.lr, t.lr * t.end_lr_ratio
  if w and n < w:
    return lr * n / w
  k, d = n - w, max(t.num_steps - w, 1)
  if name == "cosine":
    return end + (lr - end) * 0.5 * (1 + math.cos(math.pi * min(k, d) / d))
  if name == "linear":
    return lr + (end - lr) * min(k, d) / d
  if name == "constant":
    return lr
  if name == "rsqrt":
    return lr * math.sqrt(max(w, 1) / max(n, max(w, 1)))
  raise ValueError(name)


@pytest.mark.parametrize("name", ["cosine", "linear", "constant", "rsqrt"])
@pytest.mark.parametrize("warmup", [0, 10])
def test_schedules_match_the_reference(name, warmup):
  t = _train(schedule=name, lr=3e-3, warmup_steps=warmup, num_steps=100, end_lr_ratio=0.1)
  sched = optim.learning_rate_schedule(t)
  for n in (0, 1, 5, 9, 10, 11, 50, 99, 100, 150):
    np.testing.assert_allclose(float(sched(n)), _ref_schedule(name, t, n), rtol=1e-5, atol=1e-9,
                               err_msg=f"{name} at step {n}")


def test_unknown_optimizer_or_schedule_names_the_field():
  with pytest.raises(KeyError, match="train.optimizer"):
    optim.make_optimizer(_train(optimizer="sgdx"))
  with pytest.raises(KeyError, match="train.schedule"):
    optim.learning_rate_schedule(_train(schedule="nope"))


def _numpy_updates(name, t, params, grads_seq, lrs):
  """float64 reference of two or more updates of each optimizer (no clipping)."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v2 = {k: np.zeros_like(v) for k, v in p.items()}
  for i, (g, lr) in enumerate(zip(grads_seq, lrs), start=1):
    for k in p:
      gk = np.asarray(g[k], np.float64)
      decay = t.weight_decay * p[k] if p[k].ndim >= 2 else 0.0
      if name == "adamw":
        m[k] = t.b1 * m[k] + (1 - t.b1) * gk
        v2[k] = t.b2 * v2[k] + (1 - t.b2) * gk ** 2
        mh, vh = m[k] / (1 - t.b1 ** i), v2[k] / (1 - t.b2 ** i)
        p[k] = p[k] - lr * (mh / (np.sqrt(vh) + 1e-8) + decay)
      elif name == "lion":
        c = t.b1 * m[k] + (1 - t.b1) * gk
        p[k] = p[k] - lr * (np.sign(c) + decay)
        m[k] = t.b2 * m[k] + (1 - t.b2) * gk
  return p


@pytest.mark.parametrize("name", ["adamw", "lion"])
def test_optimizers_match_the_reference(name):
  t = _train(optimizer=name, grad_clip=0.0, weight_decay=0.1, b1=0.9, b2=0.99)
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(3, 4)).astype(np.float32),
            "b": rng.normal(size=(4,)).astype(np.float32)}
  grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
               for _ in range(3)]
  lrs = [1e-2, 3e-3, 5e-3]
  tx = optim.make_optimizer(t)
  state, p = tx.init(params), params
  for g, lr in zip(grads_seq, lrs):
    u, state = tx.update(g, optim.with_learning_rate(state, lr), p)
    p = jax.tree.map(lambda a, b: a + b, p, u)
  ref = _numpy_updates(name, t, params, grads_seq, lrs)
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_adafactor_by_name_reduces_a_quadratic():
  t = _train(optimizer="adafactor", grad_clip=1.0, weight_decay=0.0, b1=0.0)
  tx = optim.make_optimizer(t)
  target = jnp.arange(12.0).reshape(3, 4) / 12
  params = {"w": jnp.zeros((3, 4))}
  loss = lambda p: jnp.sum((p["w"] - target) ** 2)
  state = tx.init(params)
  first = float(loss(params))

  @jax.jit
  def update(params, state):
    u, state = tx.update(jax.grad(loss)(params), optim.with_learning_rate(state, 0.05), params)
    return jax.tree.map(lambda a, b: a + b, params, u), state

  for _ in range(50):
    params, state = update(params, state)
  assert float(loss(params)) < 0.05 * first


class _Toy:
  """A FunctionalModel stand-in: loss = scale * sum((w - x)^2); scale = NaN rejects a step."""

  def bind(self, params, rng=None, model_state=None):
    class Bound:
      def loss(self, batch, train=True):
        value = batch["scale"][0] * jnp.sum((params["w"] - batch["x"][0]) ** 2)
        return value, {"loss": value}

    return Bound()

  def model_state_of(self, model):
    return {}


def test_rejected_steps_do_not_delay_the_learning_rate():
  # Linear warmup over 10 steps: the rate grows every step, so a lag would show.
  t = _train(optimizer="adamw", schedule="linear", lr=1e-2, warmup_steps=10, num_steps=20,
             grad_clip=0.0, weight_decay=0.0, b1=0.9, b2=0.99)
  tx, sched = optim.make_optimizer(t), optim.learning_rate_schedule(t)
  step = jax.jit(make_train_step(_Toy(), tx, sched, ema_decay=0.0))
  params = {"w": jnp.asarray([0.5, -1.0, 2.0], jnp.float32)}
  state = initial_state(params, tx, seed=0, ema=False)
  x = jnp.asarray([[1.0, 0.0, -1.0]])
  scales = [1.0, np.nan, np.nan, 1.0, 1.0]  # steps 1 and 2 are rejected.
  grads_seq, lrs, logged = [], [], []
  for i, s in enumerate(scales):
    batch = {"x": x, "scale": jnp.asarray([s], jnp.float32)}
    w = np.asarray(state.params["w"], np.float64)
    if np.isfinite(s):
      grads_seq.append({"w": 2 * (w - np.asarray(x[0]))})
      lrs.append(_ref_schedule("linear", t, i))
    state, metrics = step(state, batch)
    logged.append(float(metrics.compute()["learning_rate"]))
    if np.isfinite(s):  # the reference replays only the applied updates, at schedule(step).
      ref = _numpy_updates("adamw", t, params, grads_seq, lrs)
      np.testing.assert_allclose(np.asarray(state.params["w"]), ref["w"], rtol=1e-5,
                                 err_msg=f"step {i}")
  assert int(state.rejected) == 2 and int(state.step) == len(scales)
  np.testing.assert_allclose(logged, [_ref_schedule("linear", t, i) for i in range(len(scales))],
                             rtol=1e-6)
  # The rate the last update applied is the rate logged for it.
  np.testing.assert_allclose(float(optim.applied_learning_rate(state.opt_state)), logged[-1],
                             rtol=1e-6)
