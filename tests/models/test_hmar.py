"""HMAR (model 'hmar': Markovian block-diagonal scale attention + masked in-scale refinement) and
the Markovian mask at the token level, on tiny configurations (scales 1,2,3,4 of a 4x4 latent,
depth 2, width 32):

- Markovian window 0 with FlexVAR's non-residual inputs (the input of scale k+1 is scale k's
  codes only): changing scale k's tokens never changes the logits of scales <= k or >= k + 2, at
  any depth, and does change scale k + 1's. (With VAR / HMAR inputs, the running f_hat, every
  later input carries scale k's tokens, so the statement holds for slots: changing scale k's
  input slots changes scale k's logits only, in both of HMAR's branches.)
- the refinement branch's one-scale pass (sampling) equals its teacher-forced pass over all
  scales on that scale's slots;
- the refinement counts against their formulas: after step j of a scale, sum(counts[j+1:]) cells
  are masked again; in training ceil(s_k^2 p) cells of every scale k > 1 (none at scale 1), for
  50 draws of p;
- the sampler with a schedule that refines only the last scale draws the earlier scales as
  greedy recomputation of the next-scale forward does and keeps the last scale's counts[0] most probable cells of the plain draw;
- the masked loss moves the branch, its head and the mask embedding, never the shared blocks;
- bad input: a schedule of the wrong length or with counts not summing to s^2, 'hmar' without
  the block-diagonal mask, refine_blocks beyond the depth are refused by name.
"""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.config import load_config
from arjax.core.functional import FunctionalModel, abstract_module
from arjax.models import build_model
from arjax.models.hmar import parse_schedule, refine_counts, train_mask_counts
from arjax.sampling import SamplingConfig, build_sampler
from arjax.tokenizers import build_tokenizer
from tests.models import test_flexvar as flex_test
from tests.models import test_var as var_test

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOUNDS = [(0, 1), (1, 5), (5, 14), (14, 30)]
GENERATOR = var_test.GENERATOR + ["order.markovian=True", "order.markov_window=0",
                                  "model.refine_blocks=1", "model.mask_schedule=1;4;9;16"]
LAST_ONLY = "1;4;9;4,12"  # refine the last scale: keep 4 cells, redraw 12 in one masked step


def hmar_config(*extra):
  return load_config(os.path.join(ROOT, "configs/imagenet256/hmar.py:smoke"),
                     GENERATOR + list(extra))


def frozen_tokenizer(overrides):
  tconfig = load_config(os.path.join(ROOT, "configs/tokenizers/var_vqvae.py"), overrides)
  tfm = FunctionalModel.abstract(lambda: build_model(tconfig, seed=1))
  params = var_test.random_like(tfm.abstract_params, 3, 0.1)
  params["quantizer"]["codebook"] = jnp.asarray(
      np.random.default_rng(3).standard_normal((32, 8)).astype(np.float32))
  return var_test.FrozenTokenizer(tfm, params)


def build(config, tok, seed=0):
  fm = FunctionalModel.abstract(
      lambda: build_model(config, seed=seed, tokenizer=build_tokenizer(config).with_decoder(tok)))
  return fm, var_test.random_like(fm.abstract_params, seed + 7, 0.3)


@pytest.fixture(scope="module")
def tok():
  return frozen_tokenizer(var_test.TOKENIZER)


@pytest.fixture(scope="module")
def hmar(tok):
  return build(hmar_config("model.mask_schedule=" + LAST_ONLY), tok)


def tokens_of(seed, b=2):
  return jax.random.randint(jax.random.key(seed), (b, 30), 0, 32)


# -- the Markovian mask ----------------------------------------------------------------------------
def test_markovian_tokens_never_reach_two_scales_later():
  tok = frozen_tokenizer(flex_test.TOKENIZER)
  config = flex_test.flex_config("order.markovian=True", "order.markov_window=0")
  fm, params = build(config, tok)
  f = jax.jit(lambda p, t, y: fm.bind(p).forward(t, y).logits)
  labels, tokens = jnp.array([1, 2]), tokens_of(0)
  base = np.asarray(f(params, tokens, labels))
  for k in (0, 1):
    a, e = BOUNDS[k]
    out = np.asarray(f(params, tokens.at[:, a:e].set((tokens[:, a:e] + 5) % 32), labels))
    nxt = BOUNDS[k + 1]
    np.testing.assert_array_equal(out[:, :e], base[:, :e])              # scales <= k
    assert np.abs(out[:, nxt[0]:nxt[1]] - base[:, nxt[0]:nxt[1]]).max() > 1e-3   # k + 1
    np.testing.assert_array_equal(out[:, nxt[1]:], base[:, nxt[1]:])    # k + 2 and later


def test_hmar_slots_of_scale_k_reach_scale_k_only(hmar):
  fm, params = hmar
  labels = jnp.array([4, 5])
  inputs = jax.random.normal(jax.random.key(1), (2, 29, 8))
  tokens = tokens_of(2)
  masked = jnp.zeros((1, 30), bool).at[:, 6:12].set(True)

  @jax.jit
  def both(p, x):
    m = fm.bind(p)
    ns = m.forward_inputs(x, labels).logits
    own = jnp.concatenate([m.own_codes(k, q) for k, q in
                           enumerate(m.scale_quantizer().split(tokens))][1:], 1)
    cond = m.cond(labels)
    sos = cond[:, None] + m.pos_start[...][None]
    h = jnp.concatenate([sos, m.refine_embed(x, own, masked[:, 1:])], 1)
    lvl = jnp.take(m.level_embed[...], m.order.level_ids, axis=0)
    h = h + (lvl + m.pos_embed[...])[None]
    return ns, m._refine_tail(h, cond, m.order.train_mask()).logits

  base = [np.asarray(x) for x in both(params, inputs)]
  a, e = BOUNDS[2]
  out = [np.asarray(x) for x in both(params, inputs.at[:, a - 1:e - 1].add(1.0))]
  for o, b in zip(out, base):
    np.testing.assert_array_equal(o[:, :a], b[:, :a])
    np.testing.assert_array_equal(o[:, e:], b[:, e:])
    assert np.abs(o[:, a:e] - b[:, a:e]).max() > 1e-3


def test_refine_scale_equals_teacher_forced_branch(hmar):
  fm, params = hmar
  tokens, labels = tokens_of(3), jnp.array([3, 8])
  masked = jax.random.bernoulli(jax.random.key(4), 0.5, (2, 30)).at[:, 0].set(False)

  @jax.jit
  def run(p):
    m = fm.bind(p)
    full = m.refine_forward(tokens, labels, masked).logits
    ns = m.next_scale_inputs(tokens)
    maps = m.scale_quantizer().split(tokens)
    one = [m.refine_scale(k, ns[:, a - 1:e - 1], maps[k], masked[:, a:e], labels).logits
           for k, (a, e) in enumerate(BOUNDS) if k > 0]
    return full, jnp.concatenate(one, 1)

  full, one = run(params)
  np.testing.assert_allclose(np.asarray(one), np.asarray(full)[:, 1:], rtol=1e-5, atol=1e-5)


# -- the schedule ----------------------------------------------------------------------------------
def test_refinement_counts_against_their_formulas(hmar):
  schedule = parse_schedule("1;1,3;1,1,2,5;16;25;36;64;100;169;256",
                            (1, 2, 3, 4, 5, 6, 8, 10, 13, 16))
  assert schedule[2] == (1, 1, 2, 5)
  for counts in schedule:
    want = [int(np.sum(counts[j + 1:])) for j in range(len(counts))]
    assert refine_counts(counts) == want and want[-1] == 0
  assert refine_counts((1, 1, 2, 5)) == [8, 7, 5, 0]
  fm, params = hmar
  scales = (1, 2, 3, 4)
  masks = jax.jit(jax.vmap(lambda k: fm.bind(params).train_mask(k)))(
      jax.random.split(jax.random.key(0), 50))
  masks = np.asarray(masks)[:, 0]
  for i, key in enumerate(jax.random.split(jax.random.key(0), 50)):
    p = float(jax.random.uniform(jax.random.split(key)[0]))
    for k, (a, e) in enumerate(BOUNDS):
      want = 0 if k == 0 else math.ceil(scales[k] ** 2 * np.float32(p))
      assert masks[i, a:e].sum() == want, (i, k, p)
  counts = train_mask_counts(scales, jnp.float32(0.5))
  assert [int(c) for c in counts] == [0, 2, 5, 8]


def test_sampler_refines_only_the_scheduled_scale(hmar):
  fm, params = hmar
  labels = np.array([1, 7])
  refined = build_sampler(fm, SamplingConfig(cfg_scale=1.0, top_k=1))
  got = np.asarray(refined.sample_tokens(params, labels, jax.random.key(0)))
  # Plain greedy next-scale decoding, recomputed with the full forward pass per scale.
  f = jax.jit(lambda p, t, y: fm.bind(p).forward(t, y).logits)
  want = np.zeros((2, 30), np.int32)
  for a, e in BOUNDS:
    want[:, a:e] = np.argmax(np.asarray(f(params, jnp.asarray(want), jnp.asarray(labels)))[:, a:e],
                             -1)
  np.testing.assert_array_equal(got[:, :14], want[:, :14])
  # The last scale: at least the 4 most probable plain cells are kept (greedy: the branch may
  # redraw a masked cell to the same code).
  assert ((got[:, 14:] == want[:, 14:]).sum(1) >= 4).all()


def test_masked_loss_trains_the_branch_only(hmar):
  fm, params = hmar
  batch = {"tokens": tokens_of(5), "label": jnp.array([0, 1])}

  def refine_part(p):
    _, metrics = fm.bind(p).loss(batch, train=False)
    return metrics["loss"] - metrics["next_scale_loss"]

  value, grads = jax.jit(jax.value_and_grad(refine_part))(params)
  assert np.isfinite(float(value)) and float(value) > 0
  assert float(jnp.abs(grads["refine_blocks"][0]["qkv"]["kernel"]).max()) > 0
  assert float(jnp.abs(grads["mask_embed"]).max()) > 0
  assert float(jnp.abs(grads["refine_head"]["proj"]["kernel"]).max()) > 0
  for name in ("blocks", "word_embed", "class_embed", "pos_embed", "level_embed", "head"):
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads[name])), name


# -- bad input -------------------------------------------------------------------------------------
def test_bad_hmar_input_is_named():
  with pytest.raises(ValueError, match=r"model.mask_schedule='1;4;9' has 3 scales, "
                                       r"order.scales=\[1, 2, 3, 4\] has 4"):
    abstract_module(lambda: build_model(hmar_config("model.mask_schedule=1;4;9")))
  with pytest.raises(ValueError, match=r"scale 3 \(side 3\) counts \[4, 4\] must be positive and "
                                       r"sum to 9"):
    abstract_module(lambda: build_model(hmar_config("model.mask_schedule=1;4;4,4;16")))
  with pytest.raises(ValueError, match=r"model 'hmar' runs the Markovian block-diagonal mask: set "
                                       r"order.markovian=True and order.markov_window=0"):
    abstract_module(lambda: build_model(hmar_config("order.markov_window=1")))
  with pytest.raises(ValueError, match=r"model.refine_blocks=3: expected 1 .. model.depth=2"):
    abstract_module(lambda: build_model(hmar_config("model.refine_blocks=3")))
  with pytest.raises(ValueError, match=r"order.markov_window=2: expected 0"):
    abstract_module(lambda: build_model(hmar_config("order.markov_window=2")))
