"""MAR (arjax/models/mar.py) and its sampling through the 'order' sampler over order 'masked' with
reveal='mar'.

- Paper sizes: MAR-B/L/H have exactly the trainable parameters of the official code (counted by
  tests/convert/fixtures/mar_tiny.npz's script on LTH14/mar's own modules: 207,924,768 /
  478,326,304 / 942,403,104, DiffLoss head included, VAE excluded; the paper's 208M / 479M /
  943M).
- The reveal plan against a numpy transcription of MAR's sample_tokens loop (mask_len per step).
- The sampler against a naive transcription of MAR's sample_tokens (recomputing z every step,
  revealing the next cells of the random order, linear CFG 1 + (w - 1)(N - mask_len)/N inside
  the head, every cell drawn and the step's cells kept), on the smoke model (flow head) with
  randomised weights: the same tokens from the same keys.
- Training masks: ceil(N r) cells per row, r in [0.7, 1]; loss on masked cells only.
- Inpainting keeps the given continuous tokens exactly; bad configs fail naming the field.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.config import load_config
from arjax.core.functional import FunctionalModel
from arjax.models import build_model
from arjax.sampling import SamplingConfig, build_sampler
from arjax.sampling.guidance_schedule import GuidanceSchedule
from arjax.sampling.state import PLAN_KEY

SMOKE = "configs/imagenet256/mar.py:smoke"
# Sampler tests use the flow head: with random weights a diffusion head's x0 prediction at large
# t is ~1e4 (eps does not cancel x_t), which amplifies float32 rounding between two equal
# computations; the sampler is head-agnostic and the diffusion head has its own tests.
FLOW = "configs/imagenet256/mar.py:smoke,head=flow"
OFFICIAL = {"B": 207_924_768, "L": 478_326_304, "H": 942_403_104}


@pytest.mark.parametrize("size", ["B", "L", "H"])
def test_paper_sizes_match_the_official_code(size):
  with np.load("tests/convert/fixtures/mar_tiny.npz") as z:
    official = dict(zip("BLH", z["official_params"].tolist()))
  assert official == OFFICIAL
  config = load_config(f"configs/imagenet256/mar.py:size={size}")
  fm = FunctionalModel.abstract(lambda: build_model(config))
  assert fm.param_count() == OFFICIAL[size]


def mar_mask_lens(n: int, k: int):
  """MAR's sample_tokens: tokens still masked after each step (numpy transcription)."""
  masked, out = n, []
  for step in range(k):
    mask_len = math.floor(n * np.cos(math.pi / 2.0 * (step + 1) / k))
    mask_len = max(1, min(masked - 1, mask_len))
    if step >= k - 1:
      mask_len = 0
    out.append(mask_len)
    masked = mask_len
  return out


@pytest.fixture(scope="module")
def smoke():
  config = load_config(FLOW)
  fm = FunctionalModel(build_model(config))
  # Random weights everywhere (the head's output layers start at zero).
  params = fm.initial_params()
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape, x.dtype)
                                     for x, k in zip(leaves, keys)])
  return dict(config=config, fm=fm, params=params)


@pytest.mark.parametrize("n,k", [(49, 4), (256, 64), (16, 5)])
def test_reveal_plan_matches_mar_counts(n, k):
  from arjax.orders.masked import MaskedOrder
  order = MaskedOrder(n, np.zeros((n, 2)), (1, n), reveal="mar", num_steps=k)
  plan = jax.jit(order.sample_plan, static_argnums=1)(jax.random.key(0), 3)
  step_of = np.asarray(plan.step_of)
  lens = mar_mask_lens(n, k)
  revealed = [n - lens[0]] + [lens[i - 1] - lens[i] for i in range(1, k)]
  for row in step_of:
    np.testing.assert_array_equal(np.bincount(row, minlength=k), revealed)
  # The plan's order is the row's permutation: cells of earlier steps come earlier in perm.
  perm = np.asarray(plan.perm)
  assert (np.diff(np.take_along_axis(step_of, perm, 1), axis=1) >= 0).all()
  assert len({tuple(p) for p in perm}) == 3  # a different random order per row.
  assert order.max_reveal() >= max(revealed)
  assert order.reveal_counts(n) == tuple(revealed)  # the sampler's static draw widths.


def naive_mar_sample(fm, params, labels, rng, w, temperature=1.0):
  """MAR's sample_tokens loop (cfg_schedule='linear'), written step by step in Python with the
  arjax model's condition / head and each cell drawn with the sampler's key
  fold_in(fold_in(rng, step), row * N + cell). MAR keeps orders[:mask_len] masked, so its
  `orders` lists the cells last-revealed first: the plan's permutation (reveal order) reversed."""
  model = fm.bind(params)
  b, n = labels.shape[0], model.num_tokens
  order = model.order
  k_steps = order.num_steps()
  orders = np.asarray(order.sample_plan(jax.random.fold_in(rng, PLAN_KEY), b).perm)[:, ::-1]

  @jax.jit
  def draw_all(params, tokens, mask, cfg, key):
    """Every cell's draw [B, N, C] under CFG scale cfg (one network pass on both halves)."""
    m = fm.bind(params)
    z = m.condition(jnp.concatenate([tokens, tokens]),
                    jnp.concatenate([labels, jnp.full_like(labels, m.null_class)]),
                    jnp.concatenate([mask, mask]))
    dist = m.head(z)
    guided = jax.tree.map(lambda x: x[:b], dist).guide(jax.tree.map(lambda x: x[b:], dist), cfg)
    cells = jnp.arange(b)[:, None] * n + jnp.arange(n)[None]

    def one(d, i):
      one_dist = jax.tree.map(lambda x: x[None, None], d)
      return one_dist.sample(jax.random.fold_in(key, i), temperature=temperature)[0, 0]

    return jax.vmap(jax.vmap(one))(guided, cells)

  tokens = np.zeros((b, n, model.channels), np.float32)
  mask = np.ones((b, n), bool)
  for step, mask_len in enumerate(mar_mask_lens(n, k_steps)):
    mask_next = np.zeros((b, n), bool)
    for r in range(b):
      mask_next[r, orders[r, :mask_len]] = True
    to_pred = mask & ~mask_next
    cfg = 1 + (w - 1) * (n - mask_len) / n
    draws = np.asarray(draw_all(params, jnp.asarray(tokens), jnp.asarray(mask), cfg,
                                jax.random.fold_in(rng, step)))
    tokens[to_pred] = draws[to_pred]
    mask = mask_next
  return tokens


@pytest.fixture(scope="module")
def sampler(smoke):
  """The config's sampler at w = 3 (one compile for the tests below: batch 2)."""
  return build_sampler(smoke["fm"], SamplingConfig(cfg_scale=3.0), smoke["config"])


def test_sampler_matches_naive_mar_loop_with_linear_cfg(smoke, sampler):
  # The naive loop draws every cell and keeps the step's ones, so this also shows that drawing
  # only a step's cells (OrderSampler.reveal_selected) changes no token.
  fm, params = smoke["fm"], smoke["params"]
  assert sampler.guidance.kind == "linear" and sampler.guidance.by == "revealed"
  labels, rng = jnp.array([1, 7]), jax.random.key(3)
  ours = np.asarray(sampler.sample_tokens(params, labels, rng))
  ref = naive_mar_sample(fm, params, labels, rng, 3.0)
  assert np.abs(ref).max() > 0.1
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_each_step_draws_only_the_cells_it_reveals(smoke):
  # docs/continuous.md: MAR sampled at the same speed at 8 and 16 steps because every step drew
  # max_reveal() cells (9 at K=8: 72 head draws per image; 5 at K=16: 80) where the steps
  # reveal N = 49 in all, and the head's inner loop dominates. Now step k draws its own count;
  # the tokens equal those of the max_reveal() path (taken with an all-False `known`).
  from arjax.sampling.orders import OrderSampler
  fm, params, config = smoke["fm"], smoke["params"], smoke["config"]
  order = fm.bind(params).order
  n = fm.bind(params).num_tokens
  widths = OrderSampler.draw_widths(order, n)
  assert sum(widths) == n and max(widths) == order.max_reveal() and min(widths) < max(widths)
  s = build_sampler(fm, SamplingConfig(cfg_scale=3.0), config)
  traced = []
  draw = s.draw_cells
  s.draw_cells = lambda dist, key, cells, n: (traced.append(cells.shape[1]),
                                              draw(dist, key, cells, n))[1]
  s._run = jax.jit(s._sample)
  labels, rng = jnp.array([1, 7]), jax.random.key(3)
  exact = np.asarray(s.sample_tokens(params, labels, rng))
  assert sorted(traced) == sorted(set(widths))   # one branch per distinct count, none wider.
  traced.clear()
  padded = np.asarray(s.sample_tokens(params, labels, rng, known=jnp.zeros((2, n), bool),
                                      given=jnp.zeros((2, n, 1))))
  assert traced == [order.max_reveal()]
  np.testing.assert_allclose(exact, padded, rtol=1e-5, atol=1e-5)


def test_inpainting_keeps_given_continuous_tokens(smoke, sampler):
  params = smoke["params"]
  b, n = 2, 49
  known = np.zeros((b, n), bool)
  known[0, :20] = True
  known[1, 30:] = True
  given = np.asarray(jax.random.normal(jax.random.key(1), (b, n, 1)))
  out = np.asarray(sampler.sample_tokens(params, jnp.array([2, 3]), jax.random.key(0),
                                         known=jnp.asarray(known), given=jnp.asarray(given)))
  np.testing.assert_array_equal(out[known], given[known])
  assert not np.allclose(out[~known], 0.0)  # every unknown cell was drawn.


def test_training_masks_and_loss_on_masked_cells(smoke):
  fm, params = smoke["fm"], smoke["params"]
  model = fm.bind(params)
  n = model.num_tokens
  masks = np.asarray(jax.jit(jax.vmap(lambda k: fm.bind(params).train_mask(k, 4)))(
      jax.random.split(jax.random.key(1), 20)))
  counts = masks.sum(2)                  # [20 draws, 4 rows]
  assert (counts == counts[:, :1]).all()  # one ratio per batch, as MAR.
  assert counts.min() >= math.ceil(0.7 * n) and counts.max() <= n
  assert len(set(counts[:, 0])) > 3
  loss_fn = jax.jit(lambda p, batch: fm.bind(p).loss(batch, train=False))
  x = jax.random.normal(jax.random.key(0), (4, n, 1))
  pad = jnp.array([1.0, 1.0, 1.0, 0.0])
  loss, metrics = loss_fn(params, {"latents": x, "label": jnp.arange(4), "mask": pad + 1 - pad})
  masked = model.train_mask(jax.random.split(jax.random.key(0))[0], 4)
  assert float(metrics["num_tokens"]) == float(masked.sum())  # only masked cells are scored.
  # A padded row (weight 0) changes nothing, whatever its tokens.
  loss_pad, _ = loss_fn(params, {"latents": x, "label": jnp.arange(4), "mask": pad})
  loss_pad2, _ = loss_fn(params, {"latents": x.at[3].set(5.0), "label": jnp.arange(4),
                                  "mask": pad})
  assert float(loss_pad) == pytest.approx(float(loss_pad2), rel=1e-6)
  assert float(loss_pad) != pytest.approx(float(loss), rel=1e-4)


@pytest.mark.parametrize("overrides,match", [
    (["model.head.name=categorical"], "model 'mar' models continuous tokens"),
    (["tokenizer.continuous=False"], "continuous head and needs continuous tokens.*PixelTokenizer"),
    (["model.buffer_size=0"], r"model.buffer_size=0; expected an integer >= 1"),
    (["model.mask_ratio_min=1.0"], r"model.mask_ratio_min=1.0; expected a number in \[0, 1\)"),
    (["order.num_steps=50"], "order.num_steps: num_steps=50 is more than the 49 tokens"),
    (["order.reveal=maskgit"], "reveals by confidence.*use order.reveal='mar'"),
    (["model.backbone.position=rope2d"], "model.backbone.position='rope2d'; expected 'none'"),
])
def test_bad_config_names_the_field(overrides, match):
  with pytest.raises(ValueError, match=match):  # at load (field checks) or at build.
    config = load_config(SMOKE, overrides if "head.name" not in overrides[0] else [])
    if "head.name" in overrides[0]:
      config.model.head = {"name": "categorical"}
    FunctionalModel.abstract(lambda: build_model(config))


def test_wrong_latent_channels_name_both_shapes(smoke):
  model = smoke["fm"].bind(smoke["params"])
  with pytest.raises(ValueError, match=r"takes targets \[2, 49, 1\].*got \[2, 49, 3\]"):
    model.loss({"latents": jnp.zeros((2, 49, 3)), "label": jnp.zeros(2, jnp.int32)}, train=False)


def test_revealed_cfg_progress_is_refused_by_other_samplers():
  config = load_config("configs/quickstart.py:smoke")
  fm = FunctionalModel.abstract(lambda: build_model(config))
  with pytest.raises(ValueError, match="cfg_by='revealed'.*sampler 'sequential'"):
    build_sampler(fm, SamplingConfig(cfg_scale=2.0, name="sequential"), config,
                  guidance=GuidanceSchedule("linear", 2.0, by="revealed"))
