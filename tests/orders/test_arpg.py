"""ARPG (model 'arpg', order 'arpg': a random order with ARPG's schedules) on a tiny two-pass
decoder: a prediction never depends on cells later in the order (perturbation through the real
model), every cell is predicted exactly once per sample, parallel decoding in groups of one
equals sequential decoding of the same order and seed, a parallel step sees exactly the tokens
of earlier steps, KV-cached group decoding equals recomputation, outpainting keeps the given
tokens, ARPG's schedules are its formulas, and bad input (an order the model cannot run, too
many steps, an odd layer count, an inpainting mask of the wrong shape) fails naming the value."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.orders import schedules
from arjax.orders.base import inverse_perm
from arjax.sampling import SamplingConfig
from arjax.sampling.orders import _PLAN_KEY, OrderSampler, build_sampler
from tests.helpers import tiny_config, tiny_model

N = 16  # 4 x 4 tokens, 4 levels.
GREEDY = SamplingConfig(cfg_scale=1.0, temperature=1.0, top_k=1, top_p=1.0)


def _model(**order):
  config = tiny_config(model__name="arpg", order__name="arpg", tokenizer__resolution=4,
                       **{f"order__{k}": v for k, v in order.items()})
  return tiny_model(config)


@pytest.fixture(scope="module")
def arpg():
  fm, _ = _model(schedule="arpg_arccos", num_steps=6)
  return fm


def test_two_stacks_and_one_shared_kv(arpg):
  p = arpg.initial_params()
  assert len(p["backbone"]["blocks"]) == 1 and len(p["query_blocks"]) == 1  # 2 = 1 + 1 layers.
  assert set(p["query_blocks"][0]["attn"]) == {"wq", "wo"}  # K/V come from to_k / to_v only.
  assert "to_k" in p and "to_v" in p


def test_prediction_never_depends_on_later_cells(arpg):
  model = arpg.bind(arpg.initial_params())
  tokens = jax.random.randint(jax.random.key(0), (2, N), 0, 4)
  labels = jnp.array([3, 7])
  layout = model.order.train_layout(jax.random.key(1), 2, 0, True)
  perm = np.asarray(layout.perm)
  ts = (0, 7, N - 1)                      # perturb the cell generated (t+1)-th in each sample.
  rows = np.arange(2)
  batch = [tokens] + [tokens.at[rows, perm[:, t]].set((tokens[rows, perm[:, t]] + 1) % 4)
                      for t in ts]
  tile = lambda x: jnp.concatenate([x] * len(batch))
  big = layout.replace(src=tile(layout.src), pos=tile(layout.pos), tgt=tile(layout.tgt),
                       perm=tile(layout.perm))
  logits = jax.jit(lambda toks: model.layout_logits(toks, tile(labels), big)[0])(
      jnp.concatenate(batch))
  logits = np.asarray(logits).reshape(len(batch), 2, N, -1)
  for i, t in enumerate(ts):
    diff = np.abs(logits[i + 1] - logits[0]).max(-1)            # [B, L]; slot r predicts rank r.
    assert diff[:, :t + 1].max() == 0, t  # ranks <= t never see the perturbed cell.
    if t < N - 1:
      assert diff[:, t + 1:].max() > 0, t  # later ranks do (the test can fail).


def test_every_cell_predicted_exactly_once_per_sample(arpg):
  model = arpg.bind(arpg.initial_params())
  layout = model.order.train_layout(jax.random.key(2), 3, 0, True)
  for row in np.asarray(layout.tgt):       # training: one query per cell.
    np.testing.assert_array_equal(np.sort(row), np.arange(N))
  plan = model.order.sample_plan(jax.random.key(3), 3)
  step_of = np.asarray(plan.step_of)      # sampling: one step per cell, >= 1 cell per step.
  assert plan.num_steps == 6 and step_of.min() == 0 and step_of.max() == 5
  for row in step_of:
    assert np.bincount(row, minlength=6).min() >= 1
  sampler = OrderSampler(arpg, SamplingConfig(cfg_scale=1.0, temperature=1.0, top_k=0,
                                               top_p=1.0))
  params, labels = arpg.initial_params(), jnp.array([0, 1])
  tokens = sampler.sample_tokens(params, labels, jax.random.key(4))
  assert tokens.shape == (2, N) and int(tokens.min()) >= 0 and int(tokens.max()) < 4
  # Zero-shot outpainting: the given left half comes out exactly (same compiled sampler).
  known = np.zeros((4, 4), bool)
  known[:, :2] = True
  given = jax.random.randint(jax.random.key(6), (2, N), 0, 4)
  out = np.asarray(sampler.sample_tokens(params, labels, jax.random.key(7), known=known,
                                         given=given))
  np.testing.assert_array_equal(out[:, known.reshape(-1)], np.asarray(given)[:, known.reshape(-1)])
  with pytest.raises(ValueError, match=r"inpainting mask `known` has shape \(3, 4\)"):
    sampler.sample_tokens(params, labels, jax.random.key(7), known=np.zeros((3, 4), bool),
                          given=given)


def test_groups_of_one_equal_sequential_decoding_of_the_same_order():
  """ARPG's arccos schedule with N steps predicts one token per step; greedy, that equals
  decoding the same permutation one token at a time with the training (teacher-forced) layout."""
  fm, _ = _model(schedule="arpg_arccos", num_steps=N)
  params = fm.initial_params()
  model = fm.bind(params)
  labels, rng = jnp.array([2, 9]), jax.random.key(5)
  par = np.asarray(OrderSampler(fm, GREEDY).sample_tokens(params, labels, rng))
  perm = model.order.sample_plan(jax.random.fold_in(rng, _PLAN_KEY), 2).perm
  layout = model.order.layout_for(perm)
  step = jax.jit(lambda toks: model.layout_logits(toks, labels, layout)[0])
  tokens = jnp.zeros((2, N), jnp.int32)
  for t in range(N):
    nxt = jnp.argmax(step(tokens)[:, t], -1).astype(jnp.int32)
    tokens = tokens.at[jnp.arange(2), perm[:, t]].set(nxt)
  np.testing.assert_array_equal(par, np.asarray(tokens))
  assert np.asarray(inverse_perm(perm)).shape == (2, N)


def test_a_parallel_step_sees_exactly_the_tokens_of_earlier_steps(arpg):
  """ARPG's parallel decoding: in a step that generates ranks a..b-1, the query of rank i sees
  the class and the tokens of ranks < a only. Reference without the sampler's masks: the
  training layout of the order with pi_i moved to rank a predicts pi_i from exactly those."""
  params = arpg.initial_params()
  model = arpg.bind(params)
  labels, rng = jnp.array([4, 8]), jax.random.key(8)
  par = np.asarray(OrderSampler(arpg, GREEDY).sample_tokens(params, labels, rng))
  perm = np.asarray(model.order.sample_plan(jax.random.fold_in(rng, _PLAN_KEY), 2).perm)
  cum = [0] + list(model.order.cumulative)
  assert max(np.diff(cum)) > 1                              # some steps really are parallel.
  rows = np.repeat(np.arange(2), N)                         # row (b, i): sample b, rank i.
  ranks = np.tile(np.arange(N), 2)
  logits_at = jax.jit(lambda toks, perms, slot: jnp.take_along_axis(
      model.layout_logits(toks, labels[rows], model.order.layout_for(perms))[0],
      slot[:, None, None], axis=1)[:, 0])
  tokens = np.zeros((2, N), np.int32)
  for a, b in zip(cum[:-1], cum[1:]):
    perms = perm[rows].copy()
    i = np.maximum(ranks, a)
    perms[np.arange(2 * N), a], perms[np.arange(2 * N), i] = perm[rows, i], perm[rows, a]
    nxt = np.asarray(jnp.argmax(logits_at(jnp.asarray(tokens[rows]), jnp.asarray(perms),
                                          jnp.full((2 * N,), a)), -1))
    group = (ranks >= a) & (ranks < b)
    tokens[rows[group], perm[rows[group], ranks[group]]] = nxt[group]
  np.testing.assert_array_equal(par, tokens)


def test_kv_cached_group_decoding_equals_recomputation(arpg):
  """The cached sampler (Pass 1 once per token, queries read the cache) samples what the
  sampler that recomputes every step samples: same order, greedy, with CFG (doubled batch)."""
  from arjax.sampling.cached_groups import CachedGroupSampler
  sampling = SamplingConfig(cfg_scale=2.0, temperature=1.0, top_k=1, top_p=1.0)
  params, labels, rng = arpg.initial_params(), jnp.array([1, 6]), jax.random.key(9)
  full = OrderSampler(arpg, sampling).sample_tokens(params, labels, rng)
  sampler = build_sampler(arpg, sampling)  # what the trainer, arjax.sample and evaluate use.
  assert isinstance(sampler, CachedGroupSampler)
  cached = sampler.sample_tokens(params, labels, rng)
  np.testing.assert_array_equal(np.asarray(cached), np.asarray(full))


def test_arpg_schedules_are_the_formulas():
  n, k_steps = 256, 64
  for k in range(k_steps):
    r = (k + 1) / k_steps
    assert schedules.arpg_mask_len(k, k_steps, n, "cosine") == math.floor(
        n * math.cos(math.pi / 2 * r))
    assert schedules.arpg_mask_len(k, k_steps, n, "arccos") == math.floor(
        n * math.acos(r) / (math.pi / 2))
  for sched in ("arccos", "cosine"):
    cum = schedules.arpg_cumulative(k_steps, n, sched)
    # n_k = remaining - mask_len, so after step k: N - mask_len decoded (at least one new token
    # per step), everything after the last step.
    remaining = n
    for k, c in enumerate(cum[:-1]):
      want = max(n - schedules.arpg_mask_len(k, k_steps, n, sched), n - remaining + 1)
      assert c == min(want, n - (k_steps - 1 - k)), (sched, k)
      remaining = n - c
    assert cum[-1] == n and len(cum) == k_steps


def test_an_order_the_model_cannot_run_is_refused():
  from arjax.orders import check_support, register_support
  from arjax.orders.masked import MaskedOrder
  with pytest.raises(ValueError, match="cannot run on model.name='raster_ar'"):
    tiny_model(tiny_config(model__name="raster_ar", order__name="masked"))
  register_support("causal_only_test_model", mask_kinds=("causal",))
  grid = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(N, 2)
  with pytest.raises(ValueError, match="needs a 'bidirectional' attention mask, but model.name="
                     "'causal_only_test_model' supports only \\['causal'\\]"):
    check_support(MaskedOrder(N, grid, (4, 4)), "causal_only_test_model")


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="num_layers=3 into two equal"):
    tiny_model(tiny_config(model__name="arpg", order__name="random",
                           model__backbone__num_layers=3))
  with pytest.raises(ValueError, match="only the orders \\['arpg', 'random'\\]"):
    tiny_model(tiny_config(model__name="arpg", order__name="masked"))
  with pytest.raises(ValueError, match="more than the 16 tokens"):
    _model(schedule="arpg_cosine", num_steps=20)
  with pytest.raises(ValueError, match="order.schedule='randar'"):
    _model(schedule="randar", num_steps=4)
  with pytest.raises(ValueError, match="needs separate target queries: use model 'arpg'"):
    tiny_model(tiny_config(model__name="ordered_ar", order__name="arpg", tokenizer__resolution=4,
                           order__num_steps=4))
