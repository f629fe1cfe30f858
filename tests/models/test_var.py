"""VAR (model 'var', order 'scales', sampler 'next_scale') on a tiny configuration (scales
1,2,3,4 of a 4x4 latent, N = 30, depth 2, width 32):

- block-causal: changing the tokens of scale k never changes the logits of scales <= k (and does
  change scale k + 1's); Markovian mask (one block): changing the slots (inputs) of scale k never
  changes the logits of scales < k or >= k + 2 (and does change k and k + 1; the block-causal
  model's scale k + 2 does change). Slots, not tokens: the input of every later scale is the
  running f_hat, which carries all earlier tokens in both variants;
- KV-cached next-scale decoding equals the full forward pass scale by scale (f32, 1e-5), both
  masks;
- the next-scale sampler with top-k 1 equals a naive reference that recomputes the full forward
  pass at every scale and applies VAR's CFG ramp (1 + t) l_c - t l_u, t = cfg k / (K - 1), in
  numpy; the ramp and top-k / top-p filtering against float64 numpy transcriptions of VAR's
  rules;
- teacher-forcing inputs equal the tokenizer's own running reconstruction (its encoding pass);
- the quantizer stays frozen (no parameter of the generator; gradients reach the blocks);
- bad input: scale lists not increasing / not ending at the grid / of another tokenizer, and
  sampling at scales the position table does not have, are refused by name.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.config import load_config
from arjax.core.functional import FunctionalModel, abstract_module
from arjax.heads.categorical import process_logits
from arjax.models import build_model
from arjax.sampling import SamplingConfig, build_sampler
from arjax.sampling.guidance_schedule import GuidanceSchedule
from arjax.tokenizers import build_tokenizer
from arjax.tokenizers.resample import area_resize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCALES = [1, 2, 3, 4]
BOUNDS = [(0, 1), (1, 5), (5, 14), (14, 30)]
TOKENIZER = ["model.ch=32", "model.ch_mult=[1,2]", "model.num_res_blocks=1", "model.image_size=8",
             "model.z_channels=8", "model.quantizer.code_dim=8", "model.loss.disc_weight=0.0",
             "model.quantizer.codebook_size=32", "model.quantizer.scales=[1,2,3,4]"]
GENERATOR = ["tokenizer.vocab_size=32", "tokenizer.grid=4", "tokenizer.scales=[1,2,3,4]",
             "order.scales=[1,2,3,4]", "model.depth=2", "model.width=32", "model.num_heads=2",
             "model.code_dim=8", "model.num_classes=10"]


class FrozenTokenizer:
  """A frozen autoencoder as arjax.loading.TrainedTokenizer hands it to a generator."""

  def __init__(self, fm, variables):
    m = fm.bind(variables)
    self.fm, self.variables = fm, variables
    self.vocab_size, self.grid, self.tokens_per_image = m.vocab_size, m.grid, m.tokens_per_image

  def decode(self, tokens):
    return self.fm.bind(self.variables).decode(tokens)


def var_config(*extra):
  return load_config(os.path.join(ROOT, "configs/imagenet256/var.py:smoke"), GENERATOR
                     + list(extra))


@pytest.fixture(scope="module")
def tok():
  tconfig = load_config(os.path.join(ROOT, "configs/tokenizers/var_vqvae.py"), TOKENIZER)
  tfm = FunctionalModel.abstract(lambda: build_model(tconfig, seed=1))
  # Random parameters from the shapes (no eager initialisation); a trained codebook is spread
  # out, unlike the init's +-1/V rows.
  params = random_like(tfm.abstract_params, 3, 0.1)
  params["quantizer"]["codebook"] = jnp.asarray(
      np.random.default_rng(3).standard_normal((32, 8)).astype(np.float32))
  return FrozenTokenizer(tfm, params)


def random_like(abstract, seed, std):
  """Random float32 normal(0, std) arrays of the abstract shapes (numpy: no compile per shape)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray((std * rng.standard_normal(x.shape))
                                            .astype(np.float32)), abstract)


def build(tok, *extra, seed=0):
  config = var_config(*extra)
  fm = FunctionalModel.abstract(
      lambda: build_model(config, seed=seed, tokenizer=build_tokenizer(config).with_decoder(tok)))
  # VAR's init makes the adaLN gammas ~1e-5 and the head 0.02 x: the blocks would barely act.
  # Random O(1) parameters make every dependence visible.
  return config, fm, random_like(fm.abstract_params, seed + 7, 0.3)


@pytest.fixture(scope="module")
def plain(tok):
  return build(tok)


@pytest.fixture(scope="module")
def markov(tok):
  # One block: the Markovian mask limits one attention layer to scales k-1 and k, so a change
  # at scale k can reach scale k + L after L blocks; with L = 1 it must stop at k + 1.
  return build(tok, "order.markovian=True", "model.depth=1")


def random_tokens(seed, b=2):
  return jax.random.randint(jax.random.key(seed), (b, 30), 0, 32)


def forward_fn(fm):
  return jax.jit(lambda p, t, y: fm.bind(p).forward(t, y).logits)


def test_later_scale_tokens_never_change_earlier_logits(plain):
  _, fm, params = plain
  f = forward_fn(fm)
  labels = jnp.array([1, 2])
  tokens = random_tokens(0)
  base = np.asarray(f(params, tokens, labels))
  for k in (1, 2):
    a, e = BOUNDS[k]
    changed = tokens.at[:, a:e].set((tokens[:, a:e] + 5) % 32)
    out = np.asarray(f(params, changed, labels))
    np.testing.assert_array_equal(out[:, :e], base[:, :e])        # scales <= k: bit-identical.
    assert np.abs(out[:, e:] - base[:, e:]).max() > 1e-3          # later scales see the change.


def slot_logits_fn(fm):
  return jax.jit(lambda p, x, y: fm.bind(p).forward_inputs(x, y).logits)


def test_markovian_mask_never_reaches_two_scales_later(plain, markov):
  labels = jnp.array([4, 5])
  inputs = jax.random.normal(jax.random.key(1), (2, 29, 8))
  for (_, fm, params), markovian in ((markov, True), (plain, False)):
    f = slot_logits_fn(fm)
    base = np.asarray(f(params, inputs, labels))
    a, e = BOUNDS[1]  # perturb the slots of scale 2 (inputs 0 .. 3; slot 0 is the class)
    out = np.asarray(f(params, inputs.at[:, a - 1:e - 1].add(1.0), labels))
    np.testing.assert_array_equal(out[:, :a], base[:, :a])
    assert np.abs(out[:, a:BOUNDS[2][1]] - base[:, a:BOUNDS[2][1]]).max() > 1e-3
    late = np.abs(out[:, BOUNDS[3][0]:] - base[:, BOUNDS[3][0]:]).max()
    if markovian:
      assert late == 0.0
    else:
      assert late > 1e-3  # block-causal: scale 4 sees scale 2.


@pytest.mark.parametrize("which", ["plain", "markov"])
def test_cached_decoding_equals_full_forward_scale_by_scale(which, plain, markov):
  _, fm, params = plain if which == "plain" else markov
  tokens, labels = random_tokens(2), jnp.array([3, 9])

  @jax.jit
  def both(p, t, y):
    model = fm.bind(p)
    full = model.forward(t, y).logits
    inputs = model.next_scale_inputs(t)
    caches = model.init_cache(t.shape[0])
    per_scale = []
    for k, (a, e) in enumerate(BOUNDS):
      x = None if k == 0 else inputs[:, a - 1:e - 1]
      dist, caches = model.decode_scale(k, x, y, caches)
      per_scale.append(dist.logits)
    return full, jnp.concatenate(per_scale, 1)

  full, cached = both(params, tokens, labels)
  np.testing.assert_allclose(np.asarray(cached), np.asarray(full), rtol=1e-5, atol=1e-5)


def test_teacher_forcing_inputs_equal_the_tokenizers_encoding_pass(plain, tok):
  _, fm, params = plain
  f = jnp.asarray(np.random.default_rng(4).standard_normal((2, 4, 4, 8)).astype(np.float32))

  @jax.jit
  def run(p, f):
    indices, partial = tok.fm.bind(tok.variables).quantizer._residual_pass(f)  # encoding pass
    tokens = jnp.concatenate([i.reshape(2, -1) for i in indices], 1)
    want = jnp.concatenate([area_resize(partial[k], s).reshape(2, s * s, 8)
                            for k, s in enumerate(SCALES[1:])], 1)
    return fm.bind(p).next_scale_inputs(tokens), want

  got, want = run(params, f)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_quantizer_is_frozen_and_loss_trains_the_blocks(plain):
  _, fm, params = plain
  assert set(params) == {"word_embed", "class_embed", "pos_start", "pos_embed", "level_embed",
                         "blocks", "head"}
  batch = {"tokens": random_tokens(5), "label": jnp.array([0, 1])}
  loss, grads = jax.jit(jax.value_and_grad(
      lambda p: fm.bind(p).loss(batch, train=False)[0]))(params)
  assert np.isfinite(float(loss))
  assert float(jnp.abs(grads["blocks"][0]["qkv"]["kernel"]).max()) > 0
  assert float(jnp.abs(grads["word_embed"]["kernel"]).max()) > 0


# -- sampling --------------------------------------------------------------------------------------
def var_filter_reference(logits, top_k, top_p):
  """float64 numpy transcription of VAR's sample_with_top_k_top_p_ masking: bool kept [.., V]."""
  x = logits.astype(np.float64).copy()
  if top_k > 0:
    kth = np.sort(x, -1)[..., -top_k][..., None]
    x[x < kth] = -np.inf
  if top_p > 0:
    order = np.argsort(x, -1, kind="stable")                           # ascending
    srt = np.take_along_axis(x, order, -1)
    p = np.exp(srt - srt.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    remove = np.cumsum(p, -1) <= 1 - top_p
    remove[..., -1] = False
    rm = np.zeros_like(remove)
    np.put_along_axis(rm, order, remove, -1)
    x[rm] = -np.inf
  return np.isfinite(x)


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.7), (12, 0.9), (1, 1.0)])
def test_top_k_top_p_match_vars_rule(top_k, top_p):
  rng = np.random.default_rng(top_k)
  logits = rng.standard_normal((4, 7, 40)).astype(np.float32) * 3
  kept = np.asarray(process_logits(jnp.asarray(logits), top_k=top_k, top_p=top_p)
                    > jnp.finfo(jnp.float32).min)
  want = var_filter_reference(logits, top_k, 0.0 if top_p == 1.0 else top_p)
  np.testing.assert_array_equal(kept, want)


def test_cfg_ramp_matches_var():
  rng = np.random.default_rng(0)
  cond, uncond = rng.standard_normal((2, 3, 5, 11)).astype(np.float32)
  cfg, K = 1.5, 10
  g = GuidanceSchedule("linear", 1.0 + cfg, by="steps")
  for k in range(K):
    t = cfg * k / (K - 1)
    want = (1 + t) * cond.astype(np.float64) - t * uncond
    got = g.combine(jnp.asarray(np.concatenate([cond, uncond])), g.progress(0, 30, k, K))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def naive_greedy_cfg(fm, params, tok, labels, cfg, known=None, given=None):
  """Recomputes the full forward pass at every scale (no cache), VAR's ramp in numpy, argmax;
  with known bool [B, N] / given int [B, N] (VAR's editing) the kept cells are replaced after
  each scale."""
  b = len(labels)
  null = np.full(b, 10)
  tokens = np.zeros((b, 30), np.int32)
  f = jax.jit(lambda p, t, y: fm.bind(p).forward(t, y).logits)
  for k, (a, e) in enumerate(BOUNDS):
    lc = np.asarray(f(params, jnp.asarray(tokens), jnp.asarray(labels)), np.float64)
    lu = np.asarray(f(params, jnp.asarray(tokens), jnp.asarray(null)), np.float64)
    t = cfg * k / (len(BOUNDS) - 1)
    tokens[:, a:e] = np.argmax(((1 + t) * lc - t * lu)[:, a:e], -1)
    if known is not None:
      tokens[:, a:e] = np.where(known[:, a:e], given[:, a:e], tokens[:, a:e])
  fhat = jax.jit(lambda t: tok.fm.bind(tok.variables).quantizer.partial_reconstructions(t)[-1])(
      jnp.asarray(tokens))
  return tokens, np.asarray(fhat)


def test_next_scale_sampler_equals_naive_recomputation(plain, tok):
  _, fm, params = plain
  labels = np.array([2, 6, 9])
  sampler = build_sampler(fm, SamplingConfig(cfg_scale=2.5, top_k=1),
                          guidance=GuidanceSchedule("linear", 2.5, by="steps"))
  assert sampler.name == "next_scale"
  tokens, fhat = sampler.sample_with_fhat(params, labels, jax.random.key(0))
  want_tokens, want_fhat = naive_greedy_cfg(fm, params, tok, labels, 1.5)
  np.testing.assert_array_equal(np.asarray(tokens), want_tokens)
  np.testing.assert_allclose(np.asarray(fhat), want_fhat, rtol=1e-5, atol=1e-5)


# -- bad input -------------------------------------------------------------------------------------
def test_scale_lists_are_checked_by_name(tok, plain):
  with pytest.raises(ValueError, match=r"order.scales=\[1, 3, 2, 4\]: the sides must be strictly "
                                       r"increasing"):
    build_model(var_config("order.scales=[1,3,2,4]"))
  with pytest.raises(ValueError, match=r"order.scales=\[1, 2, 3\] must end at the tokenizer's "
                                       r"grid 4x4"):
    build_model(var_config("order.scales=[1,2,3]"))
  with pytest.raises(ValueError, match=r"order.scales=\[1, 2, 4\] differ from the tokenizer's "
                                       r"scales \[1, 2, 3, 4\]"):
    build_model(var_config("order.scales=[1,2,4]"))
  # The generator's scales against a tokenizer run quantizing at other scales: both named.
  config = var_config("tokenizer.scales=[1,2,4]", "order.scales=[1,2,4]")
  other = FrozenTokenizer(tok.fm, tok.variables)
  other.tokens_per_image = 21
  model = abstract_module(
      lambda: build_model(config, tokenizer=build_tokenizer(config).with_decoder(other)))
  with pytest.raises(ValueError, match=r"generator scales order.scales=\[1, 2, 4\] differ from the "
                                       r"tokenizer's quantizer scales \[1, 2, 3, 4\]"):
    model.scale_quantizer()
  _, fm, _ = plain
  sampler = build_sampler(fm, SamplingConfig())
  with pytest.raises(ValueError, match=r"sampling scales=\[1, 2, 3, 4, 8\]: the last side must "
                                       r"be the tokenizer's grid 4"):
    sampler.check_scales([1, 2, 3, 4, 8])
  with pytest.raises(ValueError, match=r"sampling scales=\[1, 2, 4\]: model 'var' can only sample "
                                       r"at its training scales \[1, 2, 3, 4\]"):
    sampler.check_scales([1, 2, 4])
  with pytest.raises(ValueError, match=r"scales=\[1, 2, 3, 4, 4\]: the sides must be strictly"):
    sampler.check_scales([1, 2, 3, 4, 4])
  # `arjax.sample --resolution`: VAR's tables reach no other grid.
  from arjax.sampling.extrapolate import model_at_resolution
  with pytest.raises(ValueError, match=r"tokenizer.scales=\[1, 2, 3, 4\] must be .* end at "
                                       r"tokenizer.grid=8"):
    model_at_resolution(var_config(), {}, 8)
