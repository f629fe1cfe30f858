"""Issue 6's test list, the parts tests/orders/test_layouts.py and test_ordered_model.py leave out.

- schedules against the formulas of methods.md written out again here (RandAR n_k, ARPG
  mask_len cosine / arccos, MaskGIT arccos and the Gumbel temperatures, MaskGIL counts, LPD's
  20-step table, RAR's annealing ratio);
- the confidence rule reveals every cell exactly once;
- causality by perturbation through the real model for the group orders (LPD, PAR) and RAR;
- RAR sampled in raster order by the order sampler equals the KV-cached sequential sampler
  (target-aware table included);
- RandAR: the order sampler (training layout with not-yet-generated tokens hidden, i.e. the
  cache rewritten into the training layout) equals decoding from scratch in RandAR's inference
  layout [.., P_q0, P_q1, ..] at every step, with groups of one and with parallel groups;
- inpainting keeps given tokens for RandAR, LPD, PAR and raster;
- bad input: an order the model cannot run, more steps than tokens, malformed inpainting input.

Tiny models: 4 x 4 tokens (PAR's 2 x 2 regions need an even side), 4 levels, width 32.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from arjax.kernels.masks import MaskSpec
from arjax.orders import SRC_CLASS, SRC_QUERY, build_order, register_support, schedules
from arjax.orders.base import Layout, plan_from_cumulative
from arjax.sampling import SamplingConfig, SequentialSampler
from arjax.sampling.orders import _PLAN_KEY, OrderSampler, confidence_reveal
from tests.helpers import tiny_config, tiny_model

SIDE, N, V = 4, 16, 4
GREEDY = SamplingConfig(cfg_scale=1.0, temperature=1.0, top_k=1, top_p=1.0)


def _model(order, **kw):
  config = tiny_config(model__name="ordered_ar", order__name=order, tokenizer__resolution=SIDE,
                       **kw)
  fm, config = tiny_model(config)
  return fm, fm.initial_params()


class _Tok:
  """The part of a tokenizer an order reads, for a side x side grid."""

  def __init__(self, side):
    self.grid, self.tokens_per_image = (side, side), side * side

  def grid_positions(self):
    s = self.grid[0]
    return np.stack(np.meshgrid(np.arange(s), np.arange(s), indexing="ij"), -1).reshape(-1, 2)


def _order(name, model="test_model", side=4, **kw):
  c = ml_collections.ConfigDict({"order": dict(name=name, **kw), "model": dict(name=model)})
  return build_order(c, _Tok(side))


# -- schedules, against methods.md ------------------------------------------------------------
@pytest.mark.parametrize("k_steps,n", [(88, 256), (49, 196), (4, 16)])
def test_randar_cumulative_is_the_papers_n_k(k_steps, n):
  # n_k = min(floor((1 - cos(pi/2 (k+1)/K)) N) + 1, N), at least one new query per step.
  want, prev = [], 0
  for k in range(k_steps):
    nk = min(math.floor((1 - math.cos(math.pi / 2 * (k + 1) / k_steps)) * n) + 1, n)
    prev = max(nk, prev + 1)
    want.append(prev)
  assert schedules.randar_cumulative(k_steps, n) == want
  assert want[-1] == n


@pytest.mark.parametrize("sched", ["cosine", "arccos"])
@pytest.mark.parametrize("k_steps,n", [(64, 256), (32, 256), (49, 196)])
def test_arpg_mask_len_and_steps_are_the_papers(sched, k_steps, n):
  for k in range(k_steps):
    r = (k + 1) / k_steps
    want = math.floor(n * (math.cos(math.pi / 2 * r) if sched == "cosine"
                           else math.acos(r) / (math.pi / 2)))
    assert schedules.arpg_mask_len(k, k_steps, n, sched) == want, (k, sched)
  cum = schedules.arpg_cumulative(k_steps, n, sched)
  # Step k predicts remaining - mask_len: after it, N - mask_len are decoded (all at the end);
  # where the formula would decode nothing new, one token is taken.
  prev = 0
  for k, c in enumerate(cum):
    formula = n - schedules.arpg_mask_len(k, k_steps, n, sched)
    assert c == (n if k == k_steps - 1 else max(formula, prev + 1)), (k, c, formula)
    prev = c


def test_maskgit_arccos_and_gumbel_temperatures_are_the_papers():
  n, t_steps, unknown = 196, 8, 196
  for t in range(t_steps):
    got = int(schedules.maskgit_num_masked(t, t_steps, n, unknown, "arccos"))
    gamma = math.acos((t + 1) / t_steps) / (math.pi / 2)
    want = 0 if t == t_steps - 1 else max(1, min(unknown - 1, math.floor(n * gamma)))
    assert got == want, t
    unknown = got
  for t in range(t_steps):
    assert schedules.maskgit_gumbel_temperature(t, t_steps) == pytest.approx(
        4.5 * (1 - (t + 1) / t_steps))
    assert schedules.maskgit_gumbel_temperature(t, t_steps, kind="maskgil") == pytest.approx(
        4.5 * (1 - t / (t_steps - 1)))


@pytest.mark.parametrize("n", [256, 196, 64])
def test_maskgil_counts_follow_arccos_of_linspace(n):
  t_steps = 8
  counts = schedules.maskgil_reveal_counts(t_steps, n)
  v = np.arccos(np.linspace(1.0, 0.0, t_steps)) / (np.pi / 2)
  ideal = n * v / v.sum()
  assert sum(counts) == n and len(counts) == t_steps and min(counts) >= 1
  # Rounded proportions (raised to 1 where they round to 0), the last step taking the rest.
  np.testing.assert_allclose(counts[:-1], np.maximum(np.round(ideal[:-1]), 1), atol=0)
  assert abs(counts[-1] - ideal[-1]) <= t_steps


def test_lpd_uses_the_papers_20_step_table_for_256_tokens():
  table = [1, 2, 4, 5, 7, 8, 10, 11, 12, 14, 15, 16, 17, 18, 18, 19, 19, 20, 20, 20]
  assert list(schedules.LPD_GROUP_SIZES_256_20) == table and sum(table) == 256
  order = _order("lpd", side=16)
  assert order.num_steps() == 20
  assert np.diff([0] + list(order.cumulative)).tolist() == table


def test_rar_random_ratio_is_the_papers_annealing():
  start, end = 125, 187
  for step in (0, 124, 125, 140, 160, 187, 188, 250):
    want = 1.0 if step < start else 0.0 if step > end else 1 - (step - start) / (end - start)
    assert float(schedules.rar_random_ratio(step, start, end)) == pytest.approx(want), step
  order = _order("random", anneal_start=start, anneal_end=end)
  assert float(order.random_ratio(140)) == pytest.approx(1 - 15 / 62)
  assert float(order.random_ratio(None, train=False)) == 0.0  # evaluates in raster order.


# -- every cell revealed exactly once by the confidence rule ----------------------------------
@pytest.mark.parametrize("reveal", ["maskgit", "maskgil"])
@pytest.mark.parametrize("unknown", [64, 40, 9])
def test_masked_reveal_counts_cover_every_unknown_cell_once(reveal, unknown):
  order = _order("masked", side=8, reveal=reveal, mask_schedule="arccos"
                 if reveal == "maskgil" else "cosine")
  start = jnp.array([unknown])
  left, total = start, 0
  for t in range(order.num_steps()):
    k = int(order.num_to_reveal(t, start, left)[0])
    assert 0 <= k <= int(left[0])
    if unknown == order.num_tokens:
      assert k >= 1, t  # a full generation reveals something at every step.
    total += k
    left = left - k
  assert total == unknown and int(left[0]) == 0


def test_confidence_reveal_picks_exactly_the_most_confident_unknown_cells():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(3, N, V)), jnp.float32)
  draw = jnp.asarray(rng.integers(0, V, (3, N)), jnp.int32)
  known = jnp.asarray(rng.random((3, N)) < 0.3)
  num = jnp.array([1, 5, 0])
  out = np.asarray(confidence_reveal(jax.random.key(0), logits, draw, known, num, 0.0))
  assert out.sum(1).tolist() == [1, 5, 0] and not (out & np.asarray(known)).any()
  logp = np.asarray(jax.nn.log_softmax(logits, -1))
  conf = np.take_along_axis(logp, np.asarray(draw)[..., None], -1)[..., 0]
  conf[np.asarray(known)] = -np.inf
  for b in range(2):
    assert set(np.where(out[b])[0]) == set(np.argsort(-conf[b])[:int(num[b])])


# -- causality through the model, for the group orders ----------------------------------------
@pytest.mark.parametrize("order,kw", [("lpd", dict(order__num_steps=6)), ("par", {}),
                                      ("random", dict(order__anneal_start=0,
                                                      order__anneal_end=10,
                                                      model__target_aware=True))])
def test_prediction_never_depends_on_the_same_or_a_later_step(order, kw):
  fm, params = _model(order, **kw)
  model = fm.bind(params)
  tokens = jax.random.randint(jax.random.key(0), (1, N), 0, V)
  labels = jnp.array([3])
  layout = model.order.train_layout(jax.random.key(1), 1, 0, True)  # step 0: random order.
  perm = np.asarray(layout.perm)[0]
  cumulative = getattr(model.order, "cumulative", range(1, N + 1))
  step_of = np.asarray(plan_from_cumulative(layout.perm, cumulative).step_of)[0]
  a, lay = model.layout_logits(tokens, labels, layout)
  tgt = np.asarray(lay.tgt)[0]
  for t in (N // 3, N // 2):
    cell = perm[t]
    changed = tokens.at[0, cell].set((tokens[0, cell] + 1) % V)
    b, _ = model.layout_logits(changed, labels, layout)
    diff = np.abs(np.asarray(a - b)).max(-1)[0]
    earlier = [s for s, c in enumerate(tgt) if c >= 0 and step_of[c] <= step_of[cell]]
    later = [s for s, c in enumerate(tgt) if c >= 0 and step_of[c] > step_of[cell]]
    assert earlier and later
    assert diff[earlier].max() == 0, (order, t)
    assert diff[later].max() > 0, (order, t)  # the test can see a dependence.


# -- RAR: order sampler in raster order == KV-cached sequential sampler -----------------------
def test_rar_order_sampler_in_raster_order_equals_kv_cached_sampler():
  fm, params = _model("random", order__anneal_start=0, order__anneal_end=2,
                      order__sample_order="raster", model__target_aware=True)
  labels = jnp.array([0, 7])
  seq = SequentialSampler(fm, GREEDY).sample_tokens(params, labels, jax.random.key(0))
  par = OrderSampler(fm, GREEDY).sample_tokens(params, labels, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(par), np.asarray(seq))


# -- RandAR: the rewritten layout == decoding from scratch in RandAR's inference layout -------
def _randar_from_scratch(model, labels, perm, cumulative):
  """Greedy decoding that rebuilds RandAR's inference sequence at every step:
  [class, P_p0, x_p0, ..., P_p(c-1), x_p(c-1), P_q0, P_q1, ..., P_q(m-1)] (causal),
  reading the m new tokens off the query slots."""
  b = labels.shape[0]
  tokens = np.zeros((b, N), np.int32)
  length = 2 * N  # every step padded to one length (one compilation); see below.
  run = jax.jit(lambda t, lay: model.layout_logits(t, labels, lay)[0])
  done = 0
  for c in cumulative:
    m = c - done
    src, pos, tgt = [SRC_CLASS], [-1], [-1]
    for t in range(done):
      src += [SRC_QUERY, None]
      pos += [t, t]
      tgt += [t, -1]
    for t in range(done, c):
      src.append(SRC_QUERY)
      pos.append(t)
      tgt.append(t)
    # Entries are ranks: map them to each row's cells.
    rows_src = np.array([[SRC_CLASS if s == SRC_CLASS else (perm[r, p] if s is None else s)
                          for s, p in zip(src, pos)] for r in range(b)], np.int32)
    rows_pos = np.array([[-1 if p < 0 else perm[r, p] for p in pos] for r in range(b)], np.int32)
    rows_tgt = np.array([[-1 if t < 0 else perm[r, t] for t in tgt] for r in range(b)], np.int32)
    # Padding slots after the queries: under the causal mask no earlier slot sees them.
    used = rows_src.shape[1]
    pad = lambda x, v: np.concatenate([x, np.full((b, length - used), v, np.int32)], 1)
    rows_src, rows_pos, rows_tgt = pad(rows_src, SRC_CLASS), pad(rows_pos, -1), pad(rows_tgt, -1)
    layout = Layout(src=jnp.asarray(rows_src), pos=jnp.asarray(rows_pos),
                    tgt=jnp.asarray(rows_tgt), mask=MaskSpec(kind="causal"),
                    perm=jnp.asarray(perm))
    logits = run(jnp.asarray(tokens), layout)
    new = np.asarray(jnp.argmax(logits[:, used - m:used], -1))
    for r in range(b):
      tokens[r, perm[r, done:c]] = new[r]
    done = c
  return tokens


@pytest.mark.parametrize("num_steps", [N, 5])  # groups of one; RandAR's cosine groups.
def test_randar_sampler_equals_decoding_from_scratch(num_steps):
  fm, params = _model("randar", order__num_steps=num_steps)
  model = fm.bind(params)
  labels = jnp.array([1, 8])
  key = jax.random.key(3)
  got = np.asarray(OrderSampler(fm, GREEDY).sample_tokens(params, labels, key))
  plan = model.order.sample_plan(jax.random.fold_in(key, _PLAN_KEY), 2, None)
  assert plan.num_steps == num_steps
  want = _randar_from_scratch(model, labels, np.asarray(plan.perm), model.order.cumulative)
  np.testing.assert_array_equal(got, want)


# -- inpainting -------------------------------------------------------------------------------
@pytest.mark.parametrize("order,kw", [("randar", dict(order__num_steps=6)),
                                      ("lpd", dict(order__num_steps=6)), ("par", {}),
                                      ("raster", {})])
def test_inpainting_keeps_given_tokens(order, kw):
  fm, params = _model(order, **kw)
  known = np.zeros((SIDE, SIDE), bool)
  known[1:3, 1:3] = True                   # inpainting: the centre is given.
  given = jax.random.randint(jax.random.key(4), (2, SIDE, SIDE), 0, V)
  sampler = OrderSampler(fm, SamplingConfig(cfg_scale=1.0, temperature=1.0))
  out = np.asarray(sampler.sample_tokens(params, jnp.array([1, 2]), jax.random.key(5),
                                         known=known, given=given))
  k = known.reshape(-1)
  np.testing.assert_array_equal(out[:, k], np.asarray(given).reshape(2, -1)[:, k])
  assert out.min() >= 0 and out.max() < V


# -- bad input --------------------------------------------------------------------------------
def test_an_order_the_model_cannot_run_is_refused():
  from arjax.models import build_model
  with pytest.raises(ValueError, match="order.name='masked' cannot run on model.name='raster_ar'"):
    build_model(tiny_config(order__name="masked"))           # raster_ar: raster only.
  register_support("test_causal_only", mask_kinds=("causal",))
  with pytest.raises(ValueError, match="needs a 'bidirectional' attention mask"):
    _order("masked", model="test_causal_only")
  with pytest.raises(ValueError, match="needs a 'block' attention mask"):
    _order("par", model="test_causal_only")
  _order("randar", model="test_causal_only")                 # causal: accepted.
  # NAR predicts through its own heads; on ordered_ar its loss would be an empty sum.
  with pytest.raises(ValueError, match=r"order.name='nar' needs model.name in \['nar'\]"):
    _order("nar", model="ordered_ar")
  with pytest.raises(ValueError, match="needs separate target queries"):
    _model("random", order__schedule="cosine", order__num_steps=8)


@pytest.mark.parametrize("name,kw", [("randar", dict(num_steps=17)), ("lpd", dict(num_steps=17)),
                                     ("masked", dict(num_steps=17)),
                                     ("random", dict(schedule="arpg_arccos", num_steps=17)),
                                     ("random", dict(schedule="cosine", num_steps=40))])
def test_more_steps_than_tokens_is_refused(name, kw):
  with pytest.raises(ValueError, match="more than the 16 tokens"):
    _order(name, **kw)


def test_bad_group_sizes_and_step_counts_are_named():
  with pytest.raises(ValueError, match=r"order.group_sizes=\(4, 4, 4\); expected sizes >= 1 "
                                       "summing to the 16 tokens"):
    _order("lpd", schedule="sizes", group_sizes=(4, 4, 4))
  with pytest.raises(ValueError, match="group schedule 'one' takes 16 steps, got 5"):
    _order("random", schedule="one", num_steps=5)


def test_malformed_inpainting_input_is_named():
  fm, params = _model("randar", order__num_steps=6)
  sampler = OrderSampler(fm, GREEDY)
  labels = jnp.array([1, 2])
  given = jnp.zeros((2, N), jnp.int32)
  with pytest.raises(ValueError, match=r"inpainting mask `known` has shape \(3, 16\)"):
    sampler.sample_tokens(params, labels, jax.random.key(0), known=np.zeros((3, N), bool),
                          given=given)
  with pytest.raises(ValueError, match=r"inpainting tokens `given` have shape \(2, 15\)"):
    sampler.sample_tokens(params, labels, jax.random.key(0), known=np.zeros((2, N), bool),
                          given=jnp.zeros((2, 15), jnp.int32))
  with pytest.raises(ValueError, match="without the `given` tokens"):
    sampler.sample_tokens(params, labels, jax.random.key(0), known=np.zeros((2, N), bool))
