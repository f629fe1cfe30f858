"""FlexVAR (model 'flexvar', non-residual multiscale quantizer, random scale lists) on a tiny
configuration (default list 1,2,3,4 of a 4x4 latent, position map 8x8, depth 2, width 32):

- random scale lists (arjax.orders.scale_lists, FlexVAR's rule) always satisfy the constraints:
  2000 seeds checked exactly (first sides, strictly increasing, drawn sides from their ranges,
  last side = the grid, at most max_tokens tokens); both branches (default list, drawn) occur;
- the targets of each scale of a padded random layout equal an independent float64 numpy
  quantization of the area-downsampled latent (adaptive average pooling written as loops), and
  the inputs equal numpy bicubic (Keys a = -0.75, edge-clamped) of the previous scale's codes;
- the position map area-interpolated to each side equals a numpy reference;
- the padded layout's forward equals the forward at the same static list on its valid slots, and
  the loss over a random list trains the position map;
- the KV-cached sampler at a list never seen in training (5 steps ending at 6 > the grid 4)
  equals greedy (unguided) recomputation of the full forward at that list and returns that grid; model
  'var' refuses the same list naming it;
- bad lists (not increasing, not ending at the grid, beyond the position table) and a residual
  tokenizer are refused naming the list / field and the constraint.
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
from arjax.orders.scale_lists import ScaleListSpec, sample_scale_list, static_sizes
from arjax.sampling import SamplingConfig, build_sampler
from arjax.tokenizers import build_tokenizer
from tests.models.test_var import FrozenTokenizer, random_like

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = ["model.ch=32", "model.ch_mult=[1,2]", "model.num_res_blocks=1", "model.image_size=8",
             "model.z_channels=8", "model.quantizer.code_dim=8", "model.loss.disc_weight=0.0",
             "model.quantizer.codebook_size=32", "model.quantizer.scales=[1,2,3,4]",
             "model.quantizer.residual=False"]
GENERATOR = ["tokenizer.vocab_size=32", "tokenizer.grid=4", "tokenizer.scales=[1,2,3,4]",
             "order.scales=[1,2,3,4]", "model.depth=2", "model.width=32", "model.num_heads=2",
             "model.code_dim=8", "model.num_classes=10", "model.pos_grid=8",
             "model.first_scales=[1]", "model.draw_lo=[2]", "model.draw_hi=[3]",
             "model.draw_count=[2]", "model.max_tokens=30", "model.default_prob=0.3"]
UNSEEN = [1, 2, 3, 4, 6]  # 5 steps, a 6x6 latent: neither list nor grid was trained on.


def flex_config(*extra, name="flexvar"):
  return load_config(os.path.join(ROOT, f"configs/imagenet256/{name}.py:smoke"),
                     GENERATOR + list(extra))


@pytest.fixture(scope="module")
def tok():
  tconfig = load_config(os.path.join(ROOT, "configs/tokenizers/var_vqvae.py"), TOKENIZER)
  tfm = FunctionalModel.abstract(lambda: build_model(tconfig, seed=1))
  params = random_like(tfm.abstract_params, 3, 0.1)
  params["quantizer"]["codebook"] = jnp.asarray(
      np.random.default_rng(3).standard_normal((32, 8)).astype(np.float32))
  return FrozenTokenizer(tfm, params)


def build(tok, config, seed=0):
  fm = FunctionalModel.abstract(
      lambda: build_model(config, seed=seed, tokenizer=build_tokenizer(config).with_decoder(tok)))
  return fm, random_like(fm.abstract_params, seed + 7, 0.3)


@pytest.fixture(scope="module")
def flex(tok):
  return build(tok, flex_config())


def latent(seed, b=2):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((b, 4, 4, 8)).astype(np.float32))


# -- numpy references ------------------------------------------------------------------------------
def area_ref(x, s):
  """float64 adaptive average pooling [H, W, C] -> [s, s, C], as loops."""
  h = x.shape[0]
  out = np.zeros((s, s, x.shape[2]))
  for i in range(s):
    r0, r1 = (i * h) // s, math.ceil((i + 1) * h / s)
    for j in range(s):
      c0, c1 = (j * h) // s, math.ceil((j + 1) * h / s)
      out[i, j] = x[r0:r1, c0:c1].mean((0, 1))
  return out


def keys(t, a=-0.75):
  t = abs(t)
  if t <= 1:
    return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
  if t < 2:
    return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
  return 0.0


def bicubic_ref(x, s):
  """float64 PyTorch bicubic (align_corners=False, edge clamped) [h, h, C] -> [s, s, C]."""
  h = x.shape[0]

  def weights(i):
    src = (i + 0.5) * h / s - 0.5
    base = math.floor(src)
    return [(min(max(base - 1 + k, 0), h - 1), keys(src - (base - 1 + k))) for k in range(4)]

  out = np.zeros((s, s, x.shape[2]))
  for i in range(s):
    for j in range(s):
      for ri, wi in weights(i):
        for cj, wj in weights(j):
          out[i, j] += wi * wj * x[ri, cj]
  return out


def nearest_ref(x, codebook):
  d = ((x[..., None, :] - codebook) ** 2).sum(-1)
  return d.argmin(-1)


# -- scale lists -----------------------------------------------------------------------------------
def test_random_scale_lists_always_satisfy_the_constraints():
  spec = ScaleListSpec(grid=16, default=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16)).check()
  sizes, counts = jax.jit(jax.vmap(lambda k: sample_scale_list(k, spec)))(
      jax.random.split(jax.random.key(0), 2000))
  sizes, counts = np.asarray(sizes), np.asarray(counts)
  seen_default = seen_seven = 0
  for row, k in zip(sizes, counts):
    s = [int(x) for x in row[:k]]
    assert (row[k:] == 0).all()
    assert s[:2] == [1, 2] and s[-1] == 16, s
    assert all(b > a for a, b in zip(s, s[1:])), s
    assert sum(x * x for x in s) <= 680, s
    middle = s[2:-1]
    in_default = set(middle) <= {3, 4, 5, 6, 8, 10, 13}
    low = [x for x in middle if 3 <= x <= 10]
    high = [x for x in middle if 11 <= x <= 15]
    drawn = len(low) + len(high) == len(middle) and len(low) <= 5 and len(high) <= 2
    assert in_default or drawn, s
    seen_default += s == [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
    seen_seven += len(low) == 5 and len(high) == 2  # drawn, nothing dropped
  # Both branches occur (5 % default, ~90 % no drop before the budget).
  assert 40 < seen_default < 200 and seen_seven > 0


def test_random_layout_targets_inputs_and_positions_against_numpy(flex, tok):
  fm, params = flex
  f = latent(1)
  codebook = np.asarray(tok.variables["quantizer"]["codebook"], np.float64)

  @jax.jit
  def run(p, f, key):
    m = fm.bind(p)
    return m.random_layout(key, f)

  lists = set()
  for seed in range(6):
    lay = jax.tree.map(np.asarray, run(params, f, jax.random.key(seed)))
    scales = [int(x) for x in lay["sizes"][:lay["count"]]]
    lists.add(tuple(scales))
    f64 = np.asarray(f, np.float64)
    start = 0
    pos_map = np.asarray(params["pos_map"], np.float64)
    for k, s in enumerate(scales):
      sl = slice(start, start + s * s)
      for b in range(2):
        want = nearest_ref(area_ref(f64[b], s), codebook).reshape(-1)
        np.testing.assert_array_equal(lay["tokens"][b, sl], want)
        if k > 0:
          prev = scales[k - 1]
          q = lay["tokens"][b, start - prev * prev:start].reshape(prev, prev)
          want_in = bicubic_ref(codebook[q], s).reshape(s * s, -1)
          np.testing.assert_allclose(lay["inputs"][b, sl], want_in, rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(lay["pos"][sl], area_ref(pos_map, s).reshape(s * s, -1),
                                 rtol=1e-5, atol=1e-5)
      assert (lay["scale"][sl] == k).all()
      start += s * s
    assert not lay["valid"][start:].any() and lay["valid"][:start].all()
  assert len(lists) > 1  # several lists were drawn


def test_static_paths_and_padded_layout_agree(flex):
  fm, params = flex
  f, labels = latent(2), jnp.array([3, 7])
  scales = (1, 3, 4)

  @jax.jit
  def run(p, f, y):
    m = fm.bind(p)
    lay = m.list_layout(jnp.asarray(static_sizes(scales, m.spec.slots)), jnp.int32(3), f)
    tokens = m.list_tokens(f, scales)
    return (lay["tokens"], tokens, m.positions(scales), lay["pos"],
            m.forward_layout(lay, y).logits, m.forward(tokens, y, scales=scales).logits)

  lt, st, sp, lp, ll, sl = map(np.asarray, run(params, f, labels))
  n = sum(s * s for s in scales)
  np.testing.assert_array_equal(lt[:, :n], st)
  np.testing.assert_allclose(lp[:n], sp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ll[:, :n], sl, rtol=1e-4, atol=1e-4)


def test_random_list_loss_trains_the_position_map(flex):
  fm, params = flex
  batch = {"latent": latent(3), "label": jnp.array([1, 2])}

  @jax.jit
  def run(p):
    def loss(p):
      value, metrics = fm.bind(p, rng=jax.random.key(4)).loss(batch, train=True)
      return value, metrics
    return jax.value_and_grad(loss, has_aux=True)(p)

  (loss, metrics), grads = run(params)
  assert np.isfinite(float(loss))
  assert 2 <= float(metrics["num_scales"]) <= 4
  assert float(jnp.abs(grads["pos_map"]).max()) > 0
  assert set(params) == {"word_embed", "class_embed", "pos_start", "pos_map", "blocks", "head"}


# -- sampling --------------------------------------------------------------------------------------
def test_sampling_at_an_unseen_list_equals_recomputation(flex, tok):
  fm, params = flex
  labels = np.array([2, 6])
  # Greedy, unguided (VAR's CFG ramp is tested in test_var.py; the sampler's loop is shared).
  sampler = build_sampler(fm, SamplingConfig(cfg_scale=1.0, top_k=1))
  tokens, fhat = sampler.sample_with_fhat(params, labels, jax.random.key(0), scales=UNSEEN)
  n = sum(s * s for s in UNSEEN)
  assert tokens.shape == (2, n) and fhat.shape == (2, 6, 6, 8)
  # Naive: the full forward at the list, recomputed per scale, argmax.
  f = jax.jit(lambda p, t, y: fm.bind(p).forward(t, y, scales=tuple(UNSEEN)).logits)
  want = np.zeros((2, n), np.int32)
  start = 0
  for s in UNSEEN:
    logits = np.asarray(f(params, jnp.asarray(want), jnp.asarray(labels)))
    want[:, start:start + s * s] = np.argmax(logits[:, start:start + s * s], -1)
    start += s * s
  np.testing.assert_array_equal(np.asarray(tokens), want)
  codebook = np.asarray(tok.variables["quantizer"]["codebook"])
  last = codebook[want[:, -36:]].reshape(2, 6, 6, 8)
  phi = jax.jit(lambda x: tok.fm.bind(tok.variables).quantizer.phi(3, x))
  np.testing.assert_allclose(np.asarray(fhat), np.asarray(phi(jnp.asarray(last))), rtol=1e-5,
                             atol=1e-5)


def test_var_refuses_the_unseen_list_by_name(tok):
  config = load_config(os.path.join(ROOT, "configs/imagenet256/var.py:smoke"), GENERATOR[:9])
  fm = FunctionalModel.abstract(
      lambda: build_model(config, tokenizer=build_tokenizer(config).with_decoder(tok)))
  sampler = build_sampler(fm, SamplingConfig())
  with pytest.raises(ValueError, match=r"sampling scales=\[1, 2, 3, 4, 6\]: the last side must "
                                       r"be the tokenizer's grid 4"):
    sampler.sample_tokens(None, np.array([1]), jax.random.key(0), scales=UNSEEN)
  with pytest.raises(ValueError, match=r"sampling scales=\[1, 3, 4\]: model 'var' can only "
                                       r"sample at its training scales \[1, 2, 3, 4\]"):
    sampler.sample_tokens(None, np.array([1]), jax.random.key(0), scales=[1, 3, 4])


# -- bad input -------------------------------------------------------------------------------------
def test_bad_lists_are_refused_by_name(flex, tok):
  fm, _ = flex
  sampler = build_sampler(fm, SamplingConfig())
  with pytest.raises(ValueError, match=r"sampling scales=\[1, 3, 2, 4\]: the sides must be "
                                       r"strictly increasing"):
    sampler.check_scales([1, 3, 2, 4])
  with pytest.raises(ValueError, match=r"sampling scales=\[1, 2, 3\]: the last side must be the "
                                       r"tokenizer's grid 4 or larger"):
    sampler.check_scales([1, 2, 3])
  with pytest.raises(ValueError, match=r"sampling scales=\[1, 2, 4, 9\]: side 9 exceeds the "
                                       r"position table \(model.pos_grid=8\)"):
    sampler.check_scales([1, 2, 4, 9])
  with pytest.raises(ValueError, match=r"sampling scales=\[2, 4\]: the first side must be 1"):
    sampler.check_scales([2, 4])
  with pytest.raises(ValueError, match=r"model draw range \[2, 5\] must lie strictly between 1 "
                                       r"and the grid 4"):
    abstract_module(lambda: build_model(flex_config("model.draw_hi=[5]")))
  with pytest.raises(ValueError, match=r"model default scales=\[1, 2, 3, 4\] has 30 tokens, more "
                                       r"than model.max_tokens=20"):
    abstract_module(lambda: build_model(flex_config("model.max_tokens=20")))
  with pytest.raises(ValueError, match=r"model.pos_grid=3 is below the grid 4"):
    abstract_module(lambda: build_model(flex_config("model.pos_grid=3")))
  # A residual (VAR) tokenizer run under 'flexvar' is named.
  config = flex_config()
  from tests.models.test_var import TOKENIZER as VAR_TOKENIZER
  tconfig = load_config(os.path.join(ROOT, "configs/tokenizers/var_vqvae.py"), VAR_TOKENIZER)
  tfm = FunctionalModel.abstract(lambda: build_model(tconfig, seed=1))
  residual = FrozenTokenizer(tfm, random_like(tfm.abstract_params, 3, 0.1))
  model = abstract_module(
      lambda: build_model(config, tokenizer=build_tokenizer(config).with_decoder(residual)))
  with pytest.raises(ValueError, match=r"quantizer must be 'multiscale' with residual=False"):
    model.scale_quantizer()
