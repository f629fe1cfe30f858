"""Continuous heads on the order-driven model 'ordered_ar' (issue 14: continuous sampling in every
order that allows it).

- Equivalence: with order 'raster', `ordered_ar` carrying the class embedding, token projection,
  backbone and head parameters of a `raster_ar` of the same config gives the same head
  Distribution (GMM logits / means / scales; the flow head's condition) and the same evaluation
  loss for the same latents, within float32 tolerance; its KV-cached 'sequential' sampler draws
  raster_ar's latents (the GMM's greedy ones; the flow head's from the same noise).
- Random order: the 'order' sampler at temperature 0 (the GMM's greedy draw: the mean of its most
  likely component) equals a naive Python loop that follows the sampler's plan, recomputes
  `grid_dist` on the partial grid and writes each step's cell from the GMM parameters (numpy);
  the KV-cached 'cached_order' sampler (the model's default) equals it too; with inpainting the
  given cells come out exactly and the others are drawn.
- One jitted loss + gradient on a batch of latents is finite and reaches the token projection.
- Latents of the wrong channel count fail in one line naming both shapes; 'arpg', 'nar' and
  'ardm' refuse continuous heads at build in one line.

Tiny models: a 4 x 4 grid (N = 16) of 3-channel latents, width 32, 2 layers; one module fixture
per model.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from arjax.core.functional import FunctionalModel
from arjax.models import build_model
from arjax.sampling import SamplingConfig, build_sampler
from arjax.sampling.cached_orders import CachedOrderSampler
from arjax.sampling.state import PLAN_KEY
from tests.helpers import tiny_config

SIDE, N, B, C = 4, 16, 2, 3  # C > 1 latent channels.
COPIED = ("class_embed", "token_proj", "backbone", "head")  # raster_ar's parameters.
GREEDY = SamplingConfig(temperature=0.0)
# Sampled latents are fed back 16 times, so jitted and eager float32 rounding compounds: 1e-4
# (a different mixture component would move a latent by ~0.1; the distributions agree to 1e-5).
TOL = dict(rtol=1e-4, atol=1e-4)


def _config(head: str, model: str = "ordered_ar", **kw):
  c = tiny_config(tokenizer__continuous=True, tokenizer__channels=C, tokenizer__resolution=SIDE,
                  model__name=model, **kw)
  c.model.head = {"name": head}
  return c


def _latents(seed: int = 1):
  return jax.random.normal(jax.random.key(seed), (B, N, C)), jnp.array([3, 7], jnp.int32)


@pytest.fixture(scope="module", params=["gmm", "flow"])
def pair(request):
  """(head, raster_ar fm, its params, ordered_ar fm, its params with raster_ar's copied in)."""
  head = request.param
  fm_r = FunctionalModel(build_model(_config(head, "raster_ar"), seed=0))
  fm_o = FunctionalModel(build_model(_config(head), seed=1))
  p_r, p_o = fm_r.initial_params(), dict(fm_o.initial_params())
  assert set(p_o) - set(COPIED) == {"query"}  # nothing else feeds ordered_ar's raster slots.
  for name in COPIED:
    p_o[name] = p_r[name]
  return head, fm_r, p_r, fm_o, p_o


def test_raster_order_gives_raster_ar_distributions_and_loss(pair):
  head, fm_r, p_r, fm_o, p_o = pair
  latents, labels = _latents()
  r, o = fm_r.bind(p_r), fm_o.bind(p_o)
  want = r.forward(latents, labels)
  # ordered_ar's raster layout: slot 0 the class predicts cell 0, slot i + 1 carries x_i and
  # predicts x_(i+1): raster_ar's [class, x_0 ... x_(N-2)].
  got, layout = o.layout_dist(latents, labels, o.order.train_layout(jax.random.key(0), B))
  np.testing.assert_array_equal(np.asarray(layout.tgt), np.tile(np.arange(N), (B, 1)))
  leaves_w, leaves_g = jax.tree.leaves(want), jax.tree.leaves(got)
  assert type(want) is type(got) and len(leaves_w) == len(leaves_g) > 0
  for w, g in zip(leaves_w, leaves_g):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)
  batch = {"latents": latents, "label": labels}
  np.testing.assert_allclose(float(o.loss(batch, train=False)[0]),
                             float(r.loss(batch, train=False)[0]), rtol=1e-5)
  # Not trivially equal: ordered_ar's own (unreplaced) parameters give another distribution.
  own = fm_o.bind(fm_o.initial_params()).layout_dist(latents, labels, layout)[0]
  assert max(float(jnp.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(own), leaves_g)) > 1e-3


def test_sequential_sampler_on_the_raster_order_draws_raster_ar_latents(pair):
  head, fm_r, p_r, fm_o, p_o = pair
  _, labels = _latents()
  rng = jax.random.key(5)
  # GMM: greedy draws (a sampled component could flip on float32 noise); flow: the ODE from the
  # same noise (one key per position in both samplers), a continuous map of the distribution.
  cfg = GREEDY if head == "gmm" else SamplingConfig(temperature=1.0)
  so = build_sampler(fm_o, cfg, _config(head))
  assert so.name == "sequential"
  got = so.sample_tokens(p_o, labels, rng)
  want = build_sampler(fm_r, cfg).sample_tokens(p_r, labels, rng)
  assert got.shape == (B, N, C) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)


# -- random order -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_gmm():
  config = _config("gmm", order__name="random")
  fm = FunctionalModel(build_model(config, seed=0))
  return fm, config, fm.initial_params()


def _greedy_gmm(dist):
  """numpy: the mean of each cell's most likely component, [B, N, C]."""
  logits, means = np.asarray(dist.logits), np.asarray(dist.means)
  k = logits.argmax(-1)
  return np.take_along_axis(means, k[..., None, None], axis=2)[:, :, 0]


def _naive(model, labels, rng, known, given):
  """The sampler's plan, one `grid_dist` recomputation per step on the partial grid, each
  step's cells (plan.step_of == k) written with the greedy GMM value."""
  plan = model.order.sample_plan(jax.random.fold_in(rng, PLAN_KEY), B, jnp.asarray(known))
  step_of = np.asarray(plan.step_of)
  tokens, known = np.where(known[..., None], given, 0).astype(np.float32), known.copy()
  for k in range(model.order.num_steps()):
    dist = model.grid_dist(jnp.asarray(tokens), labels, jnp.asarray(known), plan)
    reveal = (step_of == k) & ~known
    tokens = np.where(reveal[..., None], _greedy_gmm(dist), tokens)
    known |= reveal
  assert known.all()
  return tokens, plan


def test_random_order_sampling_equals_a_naive_loop(random_gmm):
  fm, config, params = random_gmm
  model = fm.bind(params)
  _, labels = _latents()
  rng = jax.random.key(11)
  got = np.asarray(build_sampler(fm, SamplingConfig(name="order", temperature=0.0))
                   .sample_tokens(params, labels, rng))
  none = np.zeros((B, N), bool)
  want, plan = _naive(model, labels, rng, none, np.zeros((B, N, C), np.float32))
  perm = np.asarray(plan.perm)
  assert (perm != np.arange(N)).any() and (perm[0] != perm[1]).any()  # a random order per row.
  assert got.shape == (B, N, C) and np.unique(got.round(5)).size > N  # distinct latents.
  np.testing.assert_allclose(got, want, **TOL)
  # The default sampler of a random order is KV-cached slot decoding: the same latents.
  cached = build_sampler(fm, GREEDY, config)
  assert isinstance(cached, CachedOrderSampler)
  np.testing.assert_allclose(np.asarray(cached.sample_tokens(params, labels, rng)), got, **TOL)


def test_random_order_inpainting_keeps_given_latents(random_gmm):
  fm, _, params = random_gmm
  model = fm.bind(params)
  _, labels = _latents()
  rng = jax.random.key(12)
  known = np.asarray(jax.random.bernoulli(jax.random.key(2), 0.5, (B, N)))
  assert 0 < known.sum() < B * N
  given = np.asarray(jax.random.normal(jax.random.key(3), (B, N, C)))
  got = np.asarray(build_sampler(fm, SamplingConfig(name="order", temperature=0.0))
                   .sample_tokens(params, labels, rng, known=known, given=given))
  np.testing.assert_array_equal(got[known], given[known])   # exactly the given latents,
  assert (got[~known] != 0).all()                           # the others drawn,
  want, _ = _naive(model, labels, rng, known, given)         # each from the partial grid.
  np.testing.assert_allclose(got, want, **TOL)


def test_one_jitted_loss_and_gradient_reach_the_token_projection(random_gmm):
  fm, _, params = random_gmm
  latents, labels = _latents()
  batch = {"latents": latents, "label": labels}
  loss, grads = jax.jit(jax.value_and_grad(
      lambda p: fm.bind(p, jax.random.key(0)).loss(batch, train=True)[0]))(params)
  assert np.isfinite(float(loss))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  proj = jax.tree.leaves(grads["token_proj"])
  assert proj and max(float(jnp.abs(g).max()) for g in proj) > 0


# -- bad input ---------------------------------------------------------------------------------
def test_latents_of_the_wrong_channel_count_name_both_shapes():
  batch = {"latents": jnp.zeros((2, N, 1)), "label": jnp.zeros((2,), jnp.int32)}
  with pytest.raises(ValueError, match=rf"head 'gmm' takes targets \[2, {N}, {C}\] of float32, "
                                       rf"got \[2, {N}, 1\] of float32"):
    nnx.eval_shape(lambda: build_model(_config("gmm", order__name="random"))
                   .loss(batch, train=True))


@pytest.mark.parametrize("model,kw", [
    ("arpg", dict(order__name="arpg", order__schedule="arpg_arccos", order__num_steps=6)),
    ("nar", dict(order__name="nar")),
    ("ardm", dict(order__name="ardm")),
])
def test_subclasses_reading_discrete_tokens_refuse_continuous_heads(model, kw):
  with pytest.raises(ValueError, match=rf"^model '{model}' embeds discrete tokens: "
                                       r"model.head.name='flow' \(continuous tokens\) runs on "
                                       r"model 'ordered_ar' or 'raster_ar'"):
    nnx.eval_shape(lambda: build_model(_config("flow", model, **kw)))
