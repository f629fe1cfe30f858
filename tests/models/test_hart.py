"""HART (model 'hart': VAR + the residual diffusion head) on test_var's tiny layout (scales
1,2,3,4 of a 4x4 latent, depth 2, width 32; residual head width 16, depth 1) over a hybrid
tokenizer (quantizer.hybrid=True):

- the discrete part is VAR: the same parameters give bit-identical logits to model 'var';
- the residual head's condition LN(h + word_embed(e[q_K])) against float64 numpy;
- the diffusion target with the target token as condition is the tokenizer's own residual
  f - f_hat_discrete, and f_hat_discrete + residual is the encoder latent (1e-5);
- the next-scale sampler (cache, greedy top-k 1) equals a naive recomputation: full forward
  passes per scale, then the residual head on the full pass's last-scale hidden states with the
  same key;
- CFG at scale 1 on the residual head's eps gives the conditional sample (1e-5);
- the loss is CE + diff_weight x diffusion and its gradient reaches the head and the blocks;
- bad input: a batch residual of the wrong channels and a code dim differing from the
  tokenizer's are refused naming both shapes.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.config import load_config
from arjax.core.functional import FunctionalModel, abstract_module
from arjax.models import build_model
from arjax.sampling import SamplingConfig, build_sampler
from arjax.sampling.guidance_schedule import GuidanceSchedule
from arjax.tokenizers import build_tokenizer
from tests.models.test_var import (BOUNDS, GENERATOR, TOKENIZER, FrozenTokenizer, random_like,
                                   var_config)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAD = ["model.diff_width=16", "model.diff_depth=1", "model.diffusion_batch_mul=2"]


def hart_config(*extra):
  return load_config(os.path.join(ROOT, "configs/imagenet256/hart.py:smoke"),
                     GENERATOR + HEAD + list(extra))


@pytest.fixture(scope="module")
def tok():
  tconfig = load_config(os.path.join(ROOT, "configs/tokenizers/var_vqvae.py"),
                        TOKENIZER + ["model.quantizer.hybrid=True"])
  tfm = FunctionalModel.abstract(lambda: build_model(tconfig, seed=1))
  params = random_like(tfm.abstract_params, 3, 0.1)
  params["quantizer"]["codebook"] = jnp.asarray(
      np.random.default_rng(3).standard_normal((32, 8)).astype(np.float32))
  return FrozenTokenizer(tfm, params)


def build(config, tok, seed=0):
  fm = FunctionalModel.abstract(
      lambda: build_model(config, seed=seed, tokenizer=build_tokenizer(config).with_decoder(tok)))
  params = random_like(fm.abstract_params, seed + 7, 0.3)
  if "residual_head" in params:  # O(1) residual samples (std 0.3 makes the 8 DDPM steps blow up)
    params["residual_head"] = random_like(fm.abstract_params["residual_head"], seed + 8, 0.05)
  return fm, params


@pytest.fixture(scope="module")
def hart(tok):
  return build(hart_config(), tok)


@pytest.fixture(scope="module")
def images():
  return jnp.asarray(np.random.default_rng(5).integers(0, 256, (2, 8, 8, 3)), jnp.uint8)


def test_discrete_part_is_var(hart, tok):
  fm, params = hart
  vfm, _ = build(var_config(), tok)
  vparams = {k: v for k, v in params.items() if k in vfm.abstract_params}
  assert set(params) - set(vparams) == {"residual_head", "res_norm_scale", "res_norm_bias"}
  tokens = jax.random.randint(jax.random.key(0), (2, 30), 0, 32)
  labels = jnp.array([1, 4])
  got = jax.jit(lambda p: fm.bind(p).forward(tokens, labels).logits)(params)
  want = jax.jit(lambda p: vfm.bind(p).forward(tokens, labels).logits)(vparams)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_condition_against_numpy(hart):
  fm, params = hart
  rng = np.random.default_rng(2)
  hidden = jnp.asarray(rng.standard_normal((2, 16, 32)), jnp.float32)
  last = jnp.asarray(rng.integers(0, 32, (2, 16)), jnp.int32)
  got = np.asarray(jax.jit(lambda p: fm.bind(p).residual_condition(hidden, last))(params))
  model = fm.bind(params)
  e = np.asarray(model.scale_quantizer().codebook[...], np.float64)[np.asarray(last)]
  w = np.asarray(params["word_embed"]["kernel"], np.float64)
  bias = np.asarray(params["word_embed"]["bias"], np.float64)
  x = np.asarray(hidden, np.float64) + e @ w + bias
  x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  want = x * np.asarray(params["res_norm_scale"], np.float64) + np.asarray(
      params["res_norm_bias"], np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_target_is_the_tokenizers_residual(hart, tok, images):
  fm, params = hart

  @jax.jit
  def run(p, im):
    model = fm.bind(p)
    tokens, f_hat, residual = model._tokenizer_split(im)
    ae = tok.fm.bind(tok.variables)
    from arjax.models.autoencoder import to_float
    f = ae.latents(to_float(im, ae.image_size, ae.channels))
    target = model.residual_target(tokens, f_hat + residual, tokens[:, -16:])
    return f, f_hat, residual, target

  f, f_hat, residual, target = run(params, images)
  np.testing.assert_allclose(np.asarray(f_hat + residual), np.asarray(f), rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(target), np.asarray(residual).reshape(2, 16, 8),
                             rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def sampled(hart):
  """One greedy sampler (one compile of its jitted scale loop, reused by both tests below) and
  its sample_with_fhat draw for labels [2, 6], key 3."""
  fm, params = hart
  labels, rng = np.array([2, 6]), jax.random.key(3)
  sampler = build_sampler(fm, SamplingConfig(cfg_scale=1.0, top_k=1))
  tokens, f_all = sampler.sample_with_fhat(params, labels, rng)
  return sampler, labels, rng, tokens, f_all


def test_sampler_equals_naive_recomputation(hart, sampled):
  fm, params = hart
  _, labels, rng, tokens, f_all = sampled

  f = jax.jit(lambda p, t, y: fm.bind(p).forward(t, y).logits)  # one compile, K calls
  t = np.zeros((2, 30), np.int32)
  for a, e in BOUNDS:  # full forward pass per scale, greedy
    t[:, a:e] = np.argmax(np.asarray(f(params, jnp.asarray(t), jnp.asarray(labels)))[:, a:e], -1)

  @jax.jit
  def naive(p, t):
    model = fm.bind(p)
    y = jnp.asarray(labels)
    hidden, _ = model.hidden_inputs(model.next_scale_inputs(t), y)
    r = model.residual_dist(hidden[:, -16:], t[:, -16:]).sample(jax.random.fold_in(rng, 2_000_000))
    f_hat = model.scale_quantizer().partial_reconstructions(t)[-1]
    return t, f_hat + r.reshape(2, 4, 4, 8), r

  want_tokens, want_f, r = naive(params, jnp.asarray(t))
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(want_tokens))
  assert float(jnp.abs(r).max()) > 1e-2  # the residual really is added
  np.testing.assert_allclose(np.asarray(f_all), np.asarray(want_f), rtol=1e-4, atol=1e-4)


def test_sample_images_decode_the_discrete_part_plus_the_residual(hart, sampled):
  """sample_images (and `python -m arjax.sample`, through `images_of`) decode f_hat_discrete +
  residual, not the tokens alone."""
  fm, params = hart
  # The shared sampler: sample_images re-runs its compiled scale loop (same key, so the same
  # draw as `sampled`) and decodes through images_of.
  sampler, labels, rng, tokens, f_all = sampled
  images = np.asarray(sampler.sample_images(params, labels, rng))
  model = fm.bind(params)
  np.testing.assert_array_equal(images, np.asarray(model.decode_fhat(f_all)))
  assert not np.array_equal(images, np.asarray(model.tokenizer.decode(tokens)))


def test_cfg_scale_one_is_conditional(hart):
  fm, params = hart
  rng = np.random.default_rng(4)
  hidden = jnp.asarray(rng.standard_normal((4, 16, 32)), jnp.float32)
  last = jnp.asarray(rng.integers(0, 32, (4, 16)), jnp.int32)
  key = jax.random.key(9)

  @jax.jit
  def both(p):
    model = fm.bind(p)
    d = model.residual_dist(hidden, last)
    cond = jax.tree.map(lambda x: x[:2], d)
    uncond = jax.tree.map(lambda x: x[2:], d)
    return cond.guide(uncond, 1.0).sample(key), cond.sample(key), cond.guide(uncond, 3.0).sample(key)

  g1, c, g3 = both(params)
  np.testing.assert_allclose(np.asarray(g1), np.asarray(c), rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(g3 - c).max()) > 1e-3  # a real guidance scale changes the sample


def test_loss_is_ce_plus_weighted_diffusion(hart):
  fm, params = hart
  rng = np.random.default_rng(6)
  batch = {"tokens": jnp.asarray(rng.integers(0, 32, (2, 30)), jnp.int32),
           "residual": jnp.asarray(0.1 * rng.standard_normal((2, 16, 8)), jnp.float32),
           "label": jnp.array([1, 2])}

  @jax.jit
  def run(p):
    (loss, m), g = jax.value_and_grad(lambda q: fm.bind(q).loss(batch, train=False),
                                      has_aux=True)(p)
    return loss, m, g

  loss, m, g = run(params)
  np.testing.assert_allclose(float(loss), float(m["ce_loss"] + m["diff_loss"]), rtol=1e-6)
  assert float(m["diff_loss"]) > 0
  for name in ("residual_head", "blocks", "res_norm_scale"):
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g[name])) > 0, name


def test_bad_input_names_both_shapes(hart, tok):
  fm, params = hart
  batch = {"tokens": jnp.zeros((2, 30), jnp.int32), "residual": jnp.zeros((2, 16, 6)),
           "label": jnp.zeros((2,), jnp.int32)}
  with pytest.raises(ValueError, match=r"'residual' must be \[B, 16, 8\] .*model.code_dim=8\), "
                                       r"got \[2, 16, 6\]"):
    fm.bind(params).loss(batch, train=False)
  config = hart_config("model.code_dim=6")
  model = abstract_module(
      lambda: build_model(config, tokenizer=build_tokenizer(config).with_decoder(tok)))
  with pytest.raises(ValueError, match=r"model.code_dim=6 differs from the tokenizer's quantizer "
                                       r"code_dim=8"):
    model.scale_quantizer()
