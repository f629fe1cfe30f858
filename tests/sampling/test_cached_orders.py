"""KV-cached sampling of every order equals recomputation (issue 16, item 1).

For RandAR, LPD, PAR and NAR the 'cached_order' sampler (arjax.sampling.cached_orders) must draw
the same tokens as the recomputing 'order' sampler for the same key (random draws, with CFG), and
at every step its logits of the step's cells must equal the model's recomputed `grid_dist` of
that step's layout within 1e-5 (float32). Masked (MaskGIT) orders have nothing to cache: their
sampler must be one compiled step under `lax.fori_loop`, equal to a step-by-step Python loop.
Tiny models: a 4 x 4 grid (N = 16), vocabulary 4, width 32, 2 layers; one fixture per model.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.sampling import SamplingConfig, build_sampler
from arjax.orders.cache_plan import PAD
from arjax.orders import SRC_CLASS
from arjax.orders.cache_plan import Segment, plan_segments
from arjax.sampling.cached_groups import CachedGroupSampler
from arjax.sampling.cached_orders import CachedOrderSampler
from arjax.sampling.orders import OrderSampler
from arjax.sampling.state import PLAN_KEY
from tests.helpers import tiny_config, tiny_model

SIDE, N = 4, 16
ORDERS = {
    "randar": dict(order__name="randar", order__num_steps=6),   # parallel groups
    "lpd": dict(order__name="lpd", order__num_steps=6),
    "par": dict(order__name="par"),
    "nar": dict(order__name="nar", model__name="nar"),
}


def _build(kw):
  kw = dict(kw)
  name = kw.pop("model__name", "ordered_ar")
  fm, config = tiny_model(tiny_config(model__name=name, tokenizer__resolution=SIDE, **kw))
  return fm, config, fm.initial_params()


SAMPLING = SamplingConfig(cfg_scale=2.0, temperature=1.0)  # random draws, doubled batch.


@pytest.fixture(scope="module", params=sorted(ORDERS))
def model(request):
  fm, config, params = _build(ORDERS[request.param])
  return request.param, fm, config, params, CachedOrderSampler(fm, SAMPLING)


def test_auto_picks_the_cached_sampler(model):
  name, fm, config, _, _ = model
  assert isinstance(build_sampler(fm, SamplingConfig(), config), CachedOrderSampler), name


def test_cached_equals_recomputed_tokens_and_logits(model):
  name, fm, _, params, cached = model
  _check_cached_equals_recomputed(name, fm, params, cached)


@pytest.fixture(scope="module")
def arpg():
  fm, config = tiny_model(tiny_config(model__name="arpg", order__name="arpg",
                                      order__schedule="arpg_arccos", order__num_steps=6,
                                      tokenizer__resolution=SIDE))
  return fm, config, fm.initial_params(), CachedGroupSampler(fm, SAMPLING)


def test_arpg_cached_groups_equal_recomputed_tokens_and_logits(arpg):
  """ARPG's one-pass steps (the previous group's tokens through Pass 1, this group's queries
  through Pass 2) in several segments of their own sizes, against recomputation."""
  fm, config, params, cached = arpg
  assert isinstance(build_sampler(fm, SamplingConfig(), config), CachedGroupSampler)
  content, content_at, queries, fed, segs = cached.group_tables(fm.bind(params))
  assert len(segs) > 1 and len({s.targets for s in segs}) > 1  # the segmented path is run.
  # Step k feeds the tokens of group k - 1 (step 0: the class), and the last group never.
  ranks = np.concatenate([r[r >= 0] for r in content[1:]])
  last = int((queries[-1] >= 0).sum())
  np.testing.assert_array_equal(ranks, np.arange(N - last))
  assert content[0, 0] == SRC_CLASS and (content[0, 1:] == -1).all()
  _check_cached_equals_recomputed("arpg", fm, params, cached)


def _check_cached_equals_recomputed(name, fm, params, cached):
  """Tokens: the 'order' sampler's for the same key (two keys). Logits: at every step, the
  cached logits of the step's cells vs `grid_dist` of the recomputed layout at that step
  (known = the cells of earlier steps), on the cached run's own tokens, both CFG halves."""
  full = OrderSampler(fm, SAMPLING)
  labels = jnp.array([1, 6, 3])
  outs = []
  for seed in (0, 11):
    a = np.asarray(cached.sample_tokens(params, labels, jax.random.key(seed)))
    b = np.asarray(full.sample_tokens(params, labels, jax.random.key(seed)))
    np.testing.assert_array_equal(a, b, err_msg=name)
    outs.append(a)
  assert (outs[0] != outs[1]).any()  # the draws are random: the equality is not vacuous.

  key = jax.random.key(0)
  tokens, dists = cached.step_distributions(params, labels, key)
  np.testing.assert_array_equal(np.asarray(tokens), outs[0])   # the fori_loop's tokens.
  m = fm.bind(params)
  g = cached.guidance
  plan = m.order.sample_plan(jax.random.fold_in(key, PLAN_KEY), 3)
  feed = g.feed_labels(labels, m.null_class)
  grid_logits = jax.jit(lambda known: fm.bind(params).grid_dist(
      g.double(tokens), feed, g.double(known), g.double(plan)).logits)
  step_of = np.asarray(g.double(plan.step_of))
  leaked = 0.0
  for k in range(plan.num_steps):
    want = np.asarray(grid_logits(jnp.asarray(step_of[:3] < k)))
    got = np.asarray(dists.logits[k])
    cells = step_of == k
    assert cells.any(1).all()
    np.testing.assert_allclose(got[cells], want[cells], rtol=0, atol=1e-5, err_msg=f"{name} {k}")
    assert np.abs(got[cells]).max() > 1e-3  # real logits were compared, not zeros.
    if k:  # Control: the comparison sees a stale cache. Recomputing without the previous
      # step's cells (what a cache missing them would give) moves the logits.
      wrong = np.asarray(grid_logits(jnp.asarray(step_of[:3] < k - 1)))
      leaked = max(leaked, float(np.abs(wrong[cells] - got[cells]).max()))
  assert leaked > 1e-3, name


def test_cache_plan_feeds_what_each_paper_caches(model):
  name, fm, _, params, sampler = model
  cp, (src, pos, tgt, mask, step_of, _) = sampler.plan, fm.bind(params).cache_layout()
  kept = int(cp.num_kept.sum())
  kept_src = np.concatenate([cp.src[k, :cp.num_kept[k]] for k in range(cp.num_steps)])
  if name == "lpd":   # content fed once each (class + every group but the last); queries
    last = int((step_of == step_of.max()).sum())          # never enter the cache.
    content = cp.src[(cp.src >= 0) | (cp.src == -1)]
    assert content.size == 1 + N - last == np.unique(content).size
    assert (kept_src != -2).all() and kept < content.size  # the last content group: transient.
  elif name == "randar":  # RandAR's cache handling of a parallel step (methods.md, section 3)
    for k in range(1, cp.num_steps - 1):
      prev = np.nonzero(step_of == k - 1)[0]   # ranks of the previous step's group
      # Kept: [x_q0, P_q1, x_q1, ..., P_q(m-1), x_q(m-1)] then this step's first query (it
      # sees only known slots); the step's other queries are transient.
      want = [prev[0]] + [v for r in prev[1:] for v in (-2, r)] + [-2]
      assert cp.src[k, :cp.num_kept[k]].tolist() == want, k
      rest = cp.src[k, cp.num_kept[k]:]
      assert rest[rest != PAD].tolist() == [-2] * (int((step_of == k).sum()) - 1), k
  elif name == "par":  # every slot fed exactly once; all but the last group's are kept.
    assert cp.fed_slots() == src.size and kept == src.size - 4
  elif name == "nar":  # class + every cell but the last, each fed once.
    assert kept == N and cp.fed_slots() == N
  # A step's transient rows are written past its kept rows: the next step overwrites them.
  for k in range(cp.num_steps - 1):
    assert cp.cache_at[k + 1] == cp.cache_at[k] + cp.num_kept[k]
  assert cp.cache_len <= src.size + cp.fed_per_step


def test_masked_sampler_is_one_compiled_step():
  """MaskGIT: one trace of the model per compile (the step under lax.fori_loop), and the
  tokens of a Python loop over the same steps."""
  fm, _, params = _build(dict(order__name="masked", order__num_steps=5))
  sampling = SamplingConfig(cfg_scale=1.5, temperature=1.0)
  sampler = build_sampler(fm, sampling)
  assert isinstance(sampler, OrderSampler)
  assert CachedOrderSampler.cannot_run(fm.bind(params)) is not None
  labels, key = jnp.array([1, 2]), jax.random.key(7)
  model_cls = type(fm.bind(params))
  calls = []
  orig = model_cls.grid_dist

  def counted(self, *a, **kw):
    calls.append(1)
    return orig(self, *a, **kw)

  model_cls.grid_dist = counted
  try:
    jaxpr = jax.make_jaxpr(lambda p: sampler._sample(
        p, labels, key, jnp.zeros((2, N), bool), jnp.zeros((2, N), jnp.int32)))(params)
  finally:
    model_cls.grid_dist = orig
  text = str(jaxpr)
  assert len(calls) == 1 and ("while[" in text or "scan[" in text)
  got = np.asarray(sampler.sample_tokens(params, labels, key))

  from arjax.sampling.state import SamplerState
  m = fm.bind(params)
  g = sampler.guidance
  known0 = jnp.zeros((2, N), bool)
  state = SamplerState.create(jnp.zeros((2, N), jnp.int32), known0, key)
  plan = m.order.sample_plan(jax.random.fold_in(key, PLAN_KEY), 2, known0)
  cells = jnp.broadcast_to(jnp.arange(N), (2, N))
  step = jax.jit(lambda st: sampler.reveal_step(
      st, m.grid_dist(g.double(st.tokens), g.feed_labels(labels, m.null_class),
                      g.double(st.known), g.double(plan)),
      m.order, plan, 5, to_grid=lambda x: x, num_unknown_start=jnp.full((2,), N), cells=cells))
  for _ in range(5):  # the Python loop the compiled sampler replaces.
    state = step(state)
  np.testing.assert_array_equal(got, np.asarray(state.tokens))
  assert bool(state.known.all())


def test_bad_input_names_the_field():
  fm, _ = tiny_model(tiny_config(model__name="ordered_ar", order__name="par",
                                 tokenizer__resolution=SIDE))
  with pytest.raises(ValueError, match=r"temperature=-0.5; expected >= 0"):
    CachedOrderSampler(fm, SamplingConfig(temperature=-0.5))
  with pytest.raises(ValueError, match=r"top_p=1.5; expected a value in \(0, 1\]"):
    CachedOrderSampler(fm, SamplingConfig(top_p=1.5))
  bad = [(dict(order__name="randar", order__num_steps=-2), r"order.num_steps=-2; expected >= 1"),
         (dict(order__name="lpd", order__schedule="sizes", order__group_sizes=(8, 0, 8)),
          r"order.group_sizes=\(8, 0, 8\); expected sizes >= 1 summing to the 16 tokens"),
         (dict(order__name="lpd", order__locality_orders=-1), r"order.locality_orders=-1"),
         (dict(order__name="par", order__regions=0), r"order.regions=0; expected a square"),
         (dict(order__name="masked", order__gumbel_temperature=-1.0),
          r"order.gumbel_temperature=-1.0; expected a finite number >= 0")]
  for kw, msg in bad:
    with pytest.raises(ValueError, match=msg):
      tiny_model(tiny_config(model__name="ordered_ar", tokenizer__resolution=SIDE, **kw))
  # RAR conditions adaLN on the slot index: refused by name, with the samplers that can run it.
  fm, _ = tiny_model(tiny_config(model__name="ordered_ar", tokenizer__resolution=SIDE,
                                 order__name="random", order__anneal_start=0,
                                 order__anneal_end=2, model__start_token=True,
                                 model__timestep_cond=True, model__backbone__adaln=True))
  with pytest.raises(ValueError, match=r"sampler 'cached_order' cannot run model OrderedAR with "
                                       r"order 'random': its adaLN condition depends on the slot "
                                       r"index \(model.timestep_cond\); samplers that can: "
                                       r"\['order'"):
    CachedOrderSampler(fm, SamplingConfig())


def test_plan_segments_is_the_exact_minimum_and_covers_every_step():
  """plan_segments against enumeration of every split of K = 9 steps into <= 6 contiguous
  segments (256 splits), with the cost stated in its docstring; random step sizes, 20 draws."""
  import itertools
  rng = np.random.default_rng(0)
  k, slot_cost, max_segments = 9, 50.0, 6
  for _ in range(20):
    fed = rng.integers(1, 30, k)
    targets = np.minimum(fed, rng.integers(1, 30, k))
    at = np.cumsum(np.concatenate([[0], rng.integers(0, 20, k - 1)]))

    def cost(bounds):
      total = 0.0
      for i, j in bounds:
        f = fed[i:j].max()
        total += f * (slot_cost + at[j - 1] + f) * (j - i)
      whole = fed.max() * (slot_cost + at[-1] + fed.max()) * k
      return total + len(bounds) * whole / 50.0

    best = min(cost(list(zip((0,) + cuts, cuts + (k,))))
               for m in range(max_segments) for cuts in itertools.combinations(range(1, k), m))
    segs = plan_segments(fed, targets, at, slot_cost=slot_cost, max_segments=max_segments)
    got = cost([(s.start, s.stop) for s in segs])
    np.testing.assert_allclose(got, best, rtol=1e-12)
    assert segs[0].start == 0 and segs[-1].stop == k and len(segs) <= max_segments
    for a, b in zip(segs, segs[1:]):
      assert a.stop == b.start and a.cache_len <= b.cache_len
    for s in segs:  # every step of a segment fits its sizes (rows, targets, cache writes).
      assert s.fed >= fed[s.start:s.stop].max() and s.targets >= targets[s.start:s.stop].max()
      assert s.cache_len >= (at[s.start:s.stop] + s.fed).max()


def test_cached_order_runs_in_segments_of_their_own_sizes(model):
  """The segments of each tiny order cover its steps, and a segment is padded to its own
  largest step, not the run's (fewer rows fed than K x F)."""
  name, _, _, _, sampler = model
  cp, segs = sampler.plan, sampler.segments
  assert isinstance(segs[0], Segment) and segs[-1].stop == cp.num_steps
  padded = sum((s.stop - s.start) * s.fed for s in segs)
  assert cp.fed_slots() <= padded <= cp.num_steps * cp.fed_per_step, name
