"""The order abstraction without a model: every cell is predicted exactly once per sample, a
causal order never lets a prediction see its own or a later cell, sampling plans give every cell
one step, schedules follow the papers' formulas, and bad input fails with the values named."""
import math

import jax
import ml_collections
import numpy as np
import pytest

from arjax.orders import ORDERS, build_order
from arjax.orders.base import check_known
from arjax.orders import schedules
from arjax.orders.base import plan_from_cumulative, random_perm

GRID = (4, 4)
N = 16


class _Tokenizer:
  """The part of a tokenizer an order reads: a 4 x 4 raster grid."""
  tokens_per_image = N
  grid = GRID

  def grid_positions(self):
    return np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(N, 2)


def _config(name, **order):
  c = ml_collections.ConfigDict({"order": dict(name=name, **order),
                                 "model": dict(name="test_model")})
  return c


ORDER_CASES = [("raster", {}), ("random", {}), ("random", dict(schedule="cosine", num_steps=4)),
               ("randar", dict(num_steps=4)), ("lpd", dict(num_steps=4)), ("par", {}),
               ("nar", {}), ("masked", {})]


def _order(name, kw):
  return build_order(_config(name, **kw), _Tokenizer())


def test_every_order_is_registered():
  assert {"raster", "random", "randar", "lpd", "par", "nar", "masked"} <= set(ORDERS.names())


# NAR predicts through its right/below heads, not through Layout.tgt: not covered here.
@pytest.mark.parametrize("name,kw", [c for c in ORDER_CASES if c[0] != "nar"])
def test_every_cell_predicted_exactly_once_per_sample(name, kw):
  order = _order(name, kw)
  layout = order.train_layout(jax.random.key(0), batch=3, step=0)
  tgt = np.asarray(layout.tgt)
  perm = np.asarray(layout.perm)
  for b in range(3):
    np.testing.assert_array_equal(np.sort(perm[b]), np.arange(N))  # a permutation.
    predicted = tgt[b][tgt[b] >= 0]
    if order.confidence:  # masked: the masked set is predicted, once each.
      assert len(predicted) == len(set(predicted.tolist())) >= 1
    else:
      np.testing.assert_array_equal(np.sort(predicted), np.arange(N), err_msg=f"{name} row {b}")


@pytest.mark.parametrize("name,kw", [c for c in ORDER_CASES if c[0] not in ("masked", "nar")])
def test_causal_orders_never_show_a_prediction_its_own_or_a_later_cell(name, kw):
  order = _order(name, kw)
  if not order.causal:
    pytest.fail(f"order {name} declares itself non-causal")
  layout = order.train_layout(jax.random.key(1), batch=2, step=0)
  src, tgt = np.asarray(layout.src), np.asarray(layout.tgt)
  perm = np.asarray(layout.perm)
  l = src.shape[1]
  mask = np.asarray(layout.mask.materialize(2, l, l))  # [B|1, 1, L, L]
  mask = np.broadcast_to(mask, (2, 1, l, l))[:, 0]
  for b in range(2):
    rank = np.empty(N, int)
    rank[perm[b]] = np.arange(N)
    for q in range(l):
      if tgt[b, q] < 0:
        continue
      seen = [src[b, k] for k in range(l) if mask[b, q, k] and src[b, k] >= 0]
      assert all(rank[c] < rank[tgt[b, q]] for c in seen), (name, b, q)


@pytest.mark.parametrize("name,kw", [c for c in ORDER_CASES if c[0] != "masked"])
def test_sampling_plan_gives_every_cell_one_step(name, kw):
  order = _order(name, kw)
  plan = order.sample_plan(jax.random.key(2), batch=2)
  step_of = np.asarray(plan.step_of)
  assert plan.num_steps == order.num_steps()
  for b in range(2):
    assert sorted(set(step_of[b].tolist())) == list(range(plan.num_steps))
    # Steps follow the permutation: a cell earlier in the order is never generated later.
    along = step_of[b][np.asarray(plan.perm)[b]]
    assert np.all(np.diff(along) >= 0)


def test_inpainting_plan_keeps_known_cells_and_puts_them_first():
  known = np.zeros((2, N), bool)
  known[:, [0, 5, 10]] = True
  perm = random_perm(jax.random.key(3), 2, N, known)
  plan = plan_from_cumulative(perm, range(1, N + 1), known)
  step_of = np.asarray(plan.step_of)
  assert np.all(step_of[known] == -1) and np.all(step_of[~known] >= 0)
  assert set(np.asarray(perm)[0, :3].tolist()) == {0, 5, 10}


def test_mask_schedules_match_the_formulas():
  r = np.linspace(0, 1, 11)
  np.testing.assert_allclose(schedules.mask_ratio(r, "cosine", xp=np), np.cos(np.pi * r / 2))
  np.testing.assert_allclose(schedules.mask_ratio(r, "arccos", xp=np),
                             np.arccos(r) / (np.pi / 2))
  np.testing.assert_allclose(schedules.mask_ratio(r, "linear", xp=np), 1 - r)
  # MaskGIT: floor(N * cos(pi/2 * (t+1)/T)) masked after step t, clipped to keep >= 1 until the
  # last step, which reveals everything.
  n, t_steps, unknown = 256, 8, 256
  for t in range(t_steps):
    got = int(schedules.maskgit_num_masked(t, t_steps, n, unknown))
    want = 0 if t == t_steps - 1 else max(1, min(unknown - 1,
                                                 math.floor(n * math.cos(math.pi / 2 * (t + 1) / t_steps))))
    assert got == want, t
    unknown = got
  with pytest.raises(ValueError, match="mask schedule 'cubic'"):
    schedules.mask_ratio(0.5, "cubic")


def test_group_schedules_cover_all_tokens_in_the_given_steps():
  for steps in (1, 4, 8, 16):
    cum = schedules.randar_cumulative(steps, N)
    assert len(cum) == steps and cum[-1] == N and np.all(np.diff([0] + list(cum)) >= 1)


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="more than the 16 tokens"):
    schedules.check_steps(20, N)
  with pytest.raises(ValueError, match=r"inpainting mask `known` has shape \(2, 15\)"):
    check_known(np.zeros((2, 15), bool), 2, N, GRID)
  assert check_known(np.zeros(GRID, bool), 2, N, GRID).shape == (2, N)  # [H, W] is accepted.
  with pytest.raises(ValueError, match="must end at the 16 tokens"):
    plan_from_cumulative(random_perm(jax.random.key(0), 1, N), [4, 8], None)
  with pytest.raises(KeyError):
    build_order(_config("spiral"), _Tokenizer())
