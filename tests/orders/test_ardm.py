"""ARDM (arjax.orders.ardm, arjax.models.ardm): the DP step-budget policy against brute force,
the order-agnostic bound's estimator against exact enumeration on toy models, the model's loss
against its exact expectation, and the random-reveal sampling rule."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.orders import ardm
from tests.helpers import tiny_config, tiny_model


# -- the dynamic-programming policy -----------------------------------------------------------
@pytest.mark.parametrize("d", [4, 7, 10])
def test_dp_policy_equals_brute_force_over_every_budget(d):
  rng = np.random.default_rng(d)
  curves = [np.sort(rng.random(d))[::-1],            # decreasing, as a trained ARDM's
            rng.random(d),                          # arbitrary
            np.linspace(2.0, 0.1, d) ** 2]
  for losses in curves:
    for k in range(1, d + 1):
      cost, bounds = ardm.dp_policy(losses, k)
      bf_cost, bf_bounds = ardm.brute_force_policy(losses, k)
      assert abs(cost - bf_cost) < 1e-12
      assert abs(ardm.policy_cost(losses, bounds) - cost) < 1e-12
      assert bounds[0] == 1 and bounds[-1] == d + 1 and len(bounds) == k + 1
      assert all(s >= 1 for s in ardm.sizes_of(bounds))
    # One token per step is the full bound sum_t l_t; one step pays l_1 for every token.
    assert abs(ardm.dp_policy(losses, d)[0] - losses.sum()) < 1e-12
    assert abs(ardm.dp_policy(losses, 1)[0] - d * losses[0]) < 1e-12


def test_budget_field_errors_name_the_field():
  with pytest.raises(ValueError, match=r"order.budget='3,3': step sizes must be >= 1 and sum "
                                       r"to the 8 tokens, got sum 6"):
    ardm.parse_budget("3,3", 8, 0)
  with pytest.raises(ValueError, match=r"order.budget has 2 steps but order.num_steps=3"):
    ardm.parse_budget("4,4", 8, 3)
  with pytest.raises(ValueError, match=r"order.num_steps=9 exceeds the 8 tokens"):
    ardm.parse_budget("", 8, 9)
  with pytest.raises(ValueError, match=r"order.num_steps=-1"):
    ardm.parse_budget("", 8, -1)
  with pytest.raises(ValueError, match=r"order.budget='a,b'; expected comma-separated"):
    ardm.parse_budget("a,b", 8, 0)
  np.testing.assert_array_equal(ardm.parse_budget("", 8, 3), [3, 2, 3])
  np.testing.assert_array_equal(ardm.parse_budget("", 5, 0), [1] * 5)


# -- the estimator on toy enumerable models ---------------------------------------------------
def _toy_tables(d, v, seed, consistent):
  """Conditionals q(x_k = . | x_known) for every (k, known set, known values): a table
  indexed by k and the code of (known mask, values). consistent: the true conditionals of a
  random joint p over V^D (then every order's product is p(x) itself)."""
  rng = np.random.default_rng(seed)
  joint = rng.dirichlet(np.ones(v ** d) * 0.5).reshape((v,) * d)

  def cond(k, known_mask, x):
    if consistent:
      idx = tuple(x[j] if known_mask[j] else slice(None) for j in range(d))
      marg = joint[idx]
      # marginalise the other unknown coordinates, keep coordinate k.
      axes = [j for j in range(d) if not known_mask[j]]
      keep = axes.index(k)
      p = marg.sum(axis=tuple(a for a in range(len(axes)) if a != keep))
      return p / p.sum()
    r = np.random.default_rng([seed, k] + [int(m) for m in known_mask] +
                              [int(x[j]) if known_mask[j] else 9 for j in range(d)])
    return r.dirichlet(np.ones(v))
  return joint, cond


def _exact_order_agnostic(x, cond, d):
  """E_sigma[-log prod_t q(x_sigma(t) | x_sigma(<t))] by enumerating all D! orders, and
  -log of the mixture E_sigma prod_t q(...)."""
  logs = []
  for perm in itertools.permutations(range(d)):
    known = np.zeros(d, bool)
    lp = 0.0
    for k in perm:
      lp += math.log(cond(k, known, x)[x[k]])
      known = known.copy()
      known[k] = True
    logs.append(lp)
  logs = np.array(logs)
  return -logs.mean(), -(np.log(np.exp(logs - logs.max()).mean()) + logs.max())


def _mc_estimates(x, cond, d, scored, draws, seed):
  """The estimator weight * sum_{predict} -log q(x_k | x_known) over `draws` ardm_draw rows."""
  known, predict, weight = jax.device_get(ardm.ardm_draw(
      jax.random.key(seed), jnp.broadcast_to(jnp.asarray(scored), (draws, d))))
  out = np.empty(draws)
  cache = {}
  for i in range(draws):
    km = tuple(known[i])
    total = 0.0
    for k in np.flatnonzero(predict[i]):
      key = (k, km)
      if key not in cache:
        cache[key] = -math.log(cond(k, np.array(km), x)[x[k]])
      total += cache[key]
    out[i] = weight[i] * total
  return out


@pytest.mark.parametrize("consistent", [True, False])
def test_bound_estimator_is_unbiased_and_bounds_the_nll(consistent):
  """Mean of 20000 draws within 4 standard errors of the exact expectation (D = 4, V = 3); the
  exact expectation is >= -log p(x) (= it, when the conditionals are a joint's own)."""
  d, v = 4, 3
  joint, cond = _toy_tables(d, v, seed=3, consistent=consistent)
  for x in (np.array([0, 2, 1, 1]), np.array([2, 2, 0, 1])):
    exact, mixture = _exact_order_agnostic(x, cond, d)
    est = _mc_estimates(x, cond, d, np.ones(d, bool), 20000, seed=int(x.sum()))
    se = est.std() / math.sqrt(len(est))
    assert abs(est.mean() - exact) < 4 * se, (est.mean(), exact, se)
    assert exact >= mixture - 1e-12
    if consistent:
      assert abs(exact + math.log(joint[tuple(x)])) < 1e-9
      assert abs(mixture + math.log(joint[tuple(x)])) < 1e-9
    else:
      assert exact > mixture + 1e-6   # inconsistent conditionals: a strict gap.


def test_unscored_tokens_are_always_known():
  """With token_mask, the bound is on -log p(scored | unscored): unscored cells are known in
  every draw, and the estimator's mean matches the order-agnostic value over the scored ones."""
  d, v = 4, 3
  joint, cond = _toy_tables(d, v, seed=5, consistent=True)
  x = np.array([1, 0, 2, 2])
  scored = np.array([True, False, True, True])
  known, predict, weight = jax.device_get(ardm.ardm_draw(
      jax.random.key(0), jnp.broadcast_to(jnp.asarray(scored), (500, d))))
  assert known[:, 1].all() and not predict[:, 1].any()
  assert set(np.unique(weight).round(6)) == {1.0, 1.5, 3.0}   # D/(D-t+1) for D = 3.
  est = _mc_estimates(x, cond, d, scored, 20000, seed=1)
  marg = joint.sum(axis=(0, 2, 3))[x[1]]                   # p(x_1)
  exact = -math.log(joint[tuple(x)] / marg)                # -log p(x_0, x_2, x_3 | x_1)
  se = est.std() / math.sqrt(len(est))
  assert abs(est.mean() - exact) < 4 * se, (est.mean(), exact, se)


# -- the model --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_ardm():
  c = tiny_config(tokenizer__name="sequence", model__name="ardm", data__source="recall",
                  model__num_classes=1, model__class_dropout=0.0)
  c.tokenizer.vocab_size, c.tokenizer.length = 7, 5
  c.order.name = "ardm"
  c.model.backbone.num_layers, c.model.backbone.dim = 1, 32
  fm, config = tiny_model(c)
  return fm, config


def test_model_bound_matches_its_exact_expectation(toy_ardm):
  """The model's loss over 2048 independent draws (rows) against the exact expectation
  (1/D) sum_t l_t, with l_t enumerated over every known subset of size t-1 (D = 5)."""
  fm, _ = toy_ardm
  params = fm.initial_params()
  d, rows = 5, 2048
  x = jnp.array([3, 1, 6, 0, 2], jnp.int32)
  subsets = [np.array([j in s for j in range(d)]) for r in range(d)
             for s in itertools.combinations(range(d), r)]
  # The 32 subsets tiled to the batch of the draws below: one compiled shape for both.
  known = jnp.asarray(np.tile(np.stack(subsets), (rows // len(subsets), 1)))
  slot_nll = jax.jit(lambda p, t, k, pr: fm.bind(p).slot_nll(
      t, jnp.zeros((t.shape[0],), jnp.int32), k, pr, False))
  nll = np.asarray(slot_nll(params, jnp.broadcast_to(x, known.shape), known, ~known)).sum(1)
  sizes = np.asarray(known.sum(1))
  l_t = np.array([(nll[sizes == t - 1] / (d - t + 1)).mean() for t in range(1, d + 1)],
                 np.float64)
  exact = l_t.sum() / d
  assert abs(ardm.policy_cost(l_t, range(1, d + 2)) / d - exact) < 1e-12
  batch = {"tokens": jnp.broadcast_to(x, (rows, d)), "label": jnp.zeros((rows,), jnp.int32)}
  # The loss draws (t, sigma) per row from the model's own 'sample' stream.
  loss, metrics = jax.jit(lambda p, b: fm.bind(p).loss(b, train=True))(params, batch)
  # Per-row estimates of the same estimator, for its standard error.
  kn, pr, w = ardm.ardm_draw(jax.random.key(11), jnp.ones((rows, d), bool))
  per_row = np.asarray(w * slot_nll(params, batch["tokens"], kn, pr).sum(1)) / d
  se = per_row.std() / math.sqrt(rows)
  assert abs(float(loss) - exact) < 4 * se, (float(loss), exact, se)
  assert abs(per_row.mean() - exact) < 4 * se
  assert float(metrics["num_tokens"]) == rows * d
  # step_losses at t estimates l_t (mean over rows of random subsets of size t-1).
  steps = jax.jit(lambda p, t, k: fm.bind(p).step_losses(
      batch["tokens"], batch["label"], t, k))
  for t in (1, 3, 5):
    st = np.asarray(steps(params, t, jax.random.key(t)))
    assert abs(st.mean() - l_t[t - 1]) < 4 * st.std() / math.sqrt(rows) + 1e-5


def test_reveal_follows_the_budget_and_sampler_runs(toy_ardm):
  from arjax.orders.ardm import ARDMOrder
  order = ARDMOrder(5, np.zeros((5, 2), np.int32), (1, 5), budget="2,1,2")
  known = jnp.zeros((3, 5), bool)
  for step, size in enumerate([2, 1, 2]):
    r = order.reveal_cells(step, known, None, key=jax.random.key(step))
    assert (np.asarray(r.sum(1)) == size).all() and not (r & known).any()
    known = known | r
  assert known.all()
  from arjax.sampling import SamplingConfig, build_sampler
  fm, config = toy_ardm
  params = fm.initial_params()
  sampler = build_sampler(fm, SamplingConfig(), config)
  assert sampler.name == "order"
  tokens = np.asarray(sampler.sample_tokens(params, jnp.zeros((4,), jnp.int32),
                                            jax.random.key(0)))
  assert tokens.shape == (4, 5) and tokens.min() >= 0 and tokens.max() < 7


def test_ardm_order_is_refused_on_other_models():
  from arjax.models import build_model
  c = tiny_config(model__name="ordered_ar")
  c.order.name = "ardm"
  with pytest.raises(ValueError, match=r"order.name='ardm' needs model.name in \['ardm'\]"):
    build_model(c)
