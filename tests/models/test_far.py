"""FAR (arjax/models/far.py) and its sampler 'next_frequency' against references that could
disagree with them:

- the level-k input equals the library's PyTorch-exact area resize to k x k followed by the
  bicubic resize back (arjax.tokenizers.resample, itself checked against PyTorch), level 0 zeros,
  level G - 1 not the identity; the stacked matrices equal a float64 numpy product;
- the optional loss weight scales the loss by w_k = 1 + sin(pi/2 (k + 1) / G) of the batch's
  level (same key: same level, same noise);
- the level embedding is added to the flow head's MLP condition (Linear(z) + Linear(k)), and to z
  for a GMM head;
- the sampler equals a naive step-by-step recompute (Python loop over the levels, each step's
  guided head drawn with fold_in(rng, s), CFG 1 + (w - 1) s / S, FAR's temperature ramp);
- a level list that is not increasing or exceeds the grid fails naming model.sample_levels.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from arjax.config import load_config
from arjax.core.functional import FunctionalModel
from arjax.models import build_model
from arjax.models.far import level_matrices, level_weights
from arjax.sampling import SamplingConfig, build_sampler
from arjax.tokenizers.resample import area_matrix, area_resize, bicubic_matrix, bicubic_resize

# The flow head: its sampler is a deterministic ODE given the key (see tests/models/test_mar.py
# on why not the diffusion head with random weights).
FLOW = "configs/imagenet256/far.py:smoke,head=flow"


@pytest.fixture(scope="module")
def smoke():
  config = load_config(FLOW)
  fm = FunctionalModel(build_model(config))
  params = fm.initial_params()
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape, x.dtype)
                                     for x, k in zip(leaves, keys)])
  return dict(config=config, fm=fm, params=params)


def test_level_input_is_area_then_bicubic(smoke):
  model = smoke["fm"].bind(smoke["params"])
  g = model.grid
  x = np.random.default_rng(0).normal(size=(2, g * g, 1)).astype(np.float32)
  img = jnp.asarray(x.reshape(2, g, g, 1))
  for k in range(g):
    got = np.asarray(model.level_input(jnp.asarray(x), k))
    if k == 0:
      np.testing.assert_array_equal(got, 0)
      continue
    want = np.asarray(bicubic_resize(area_resize(img, k), g)).reshape(2, g * g, 1)
    np.testing.assert_allclose(got, want, atol=1e-5)
  assert np.abs(got - x).max() > 1e-2  # level G - 1 still low-passes.
  m = level_matrices(g)
  for k in (1, 3, g - 1):
    np.testing.assert_allclose(m[k], bicubic_matrix(k, g) @ area_matrix(g, k), rtol=1e-12)
  # A traced level indexes the same stack.
  traced = jax.jit(model.level_input)(jnp.asarray(x), jnp.int32(3))
  np.testing.assert_allclose(np.asarray(traced), np.asarray(model.level_input(jnp.asarray(x), 3)),
                             atol=1e-6)


def test_level_loss_weight_scales_the_loss_by_w_k(smoke):
  batch = {"tokens": jnp.asarray(np.random.default_rng(1).normal(size=(3, 49, 1)), jnp.float32),
           "label": jnp.array([1, 2, 3])}
  model = smoke["fm"].bind(smoke["params"])
  plain, metrics = model.loss(batch, train=False)
  model.level_loss_weight = True  # the same model, key, level and noise; only the weight.
  weighted, metrics2 = model.loss(batch, train=False)
  k = int(metrics["level"])
  assert int(metrics2["level"]) == k
  np.testing.assert_allclose(float(weighted), float(plain) * level_weights(7)[k], rtol=1e-5)
  np.testing.assert_allclose(level_weights(16)[[0, 15]],
                             [1 + math.sin(math.pi / 32), 2.0], rtol=1e-12)


def naive_far_sample(fm, params, labels, rng, w, tau=1.0):
  """FAR's sample_tokens_nomask step by step in Python: level input by the resample functions,
  guided head drawn with fold_in(rng, s)."""
  model = fm.bind(params)
  levels, steps, g = model.sample_levels, len(model.sample_levels), model.grid
  b = labels.shape[0]
  x = jnp.zeros((b, g * g, model.channels), jnp.float32)
  feed = jnp.concatenate([labels, jnp.full_like(labels, model.null_class)])
  for s, k in enumerate(levels):
    if k == 0:
      inp = jnp.zeros_like(x)
    else:
      img = x.reshape(b, g, g, -1)
      inp = bicubic_resize(area_resize(img, k), g).reshape(x.shape)
    dist = model.level_dist(jnp.concatenate([inp, inp]), feed, k)
    cond = jax.tree.map(lambda a: a[:b], dist)
    unc = jax.tree.map(lambda a: a[b:], dist)
    scale = 1 + (w - 1) * s / steps
    temp = 0.8 + (1 - math.cos(math.pi / 2 * (s + 1) / steps)) * (tau - 0.8)
    x = cond.guide(unc, scale).sample(jax.random.fold_in(rng, s), temperature=temp)
  return np.asarray(x)


def test_sampler_matches_naive_level_loop(smoke):
  fm, params = smoke["fm"], smoke["params"]
  sampler = build_sampler(fm, SamplingConfig(cfg_scale=3.0), smoke["config"])
  assert sampler.name == "next_frequency" and sampler.guidance.kind == "linear"
  labels, rng = jnp.array([1, 7]), jax.random.key(3)
  ours = np.asarray(sampler.sample_tokens(params, labels, rng))
  ref = naive_far_sample(fm, params, labels, rng, 3.0)
  assert ours.shape == (2, 49, 1) and np.abs(ref).max() > 0.1
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_level_embedding_enters_the_mlp_condition_or_z(smoke):
  """Flow head (MAR's denoising MLP): Linear(1, W)(k) is added to the MLP's condition
  Linear(z), as the official DiffLoss's index_cond_embed; a GMM head has no such condition and
  gets Linear(1, Dd)(k) on z."""
  model = smoke["fm"].bind(smoke["params"])
  z = jnp.asarray(np.random.default_rng(2).normal(size=(2, 49, 32)), jnp.float32)
  emb = model.level_embed
  assert model.level_in_head and emb.kernel.shape == (1, model.head.net.width)
  got = model.level_head(z, 3).c
  want = model.head.net.embed_cond(z) + 3.0 * emb.kernel[...][0] + emb.bias[...]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  config = load_config(FLOW)
  config.model.head = ml_collections.ConfigDict(dict(name="gmm", num_components=2))
  gmm = build_model(config)
  assert not gmm.level_in_head and gmm.level_embed.kernel.shape == (1, gmm.dec_cfg.dim)
  want = gmm.head(z + 3.0 * gmm.level_embed.kernel[...][0] + gmm.level_embed.bias[...])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               gmm.level_head(z, 3), want)


@pytest.mark.parametrize("levels,match", [
    ("(0, 3, 2)", r"model.sample_levels=\[0, 3, 2\]; expected strictly increasing"),
    ("(0, 2, 7)", r"model.sample_levels=\[0, 2, 7\]: level 7 exceeds the 7x7 token grid"),
    ("(1, 2)", r"model.sample_levels=\[1, 2\]; expected strictly increasing levels starting "
               r"at 0"),
])
def test_bad_level_lists_name_the_field(levels, match):
  with pytest.raises(ValueError, match=match):
    build_model(load_config(FLOW, [f"model.sample_levels={levels}"]))
