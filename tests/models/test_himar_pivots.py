"""Hi-MAR's pivot drop ramp and its low-resolution pivot source (arjax/models/himar.py), against
the official code (HiDream-ai/himar at 1d378c1: models/himar.py forward_mae_encoder_stage2,
main_himar.py, main_cache.py cache_latents).

- The ramp P(drop)(step) = 1 - (1 - pivot_drop) min(1, e / warmup), e = step rounded down to a
  multiple of `pivot_drop_every` (official 1 - step_stage2_rate min(1, epoch / step_warmup)),
  against a float64 numpy transcription at the epoch boundaries; the ImageNet config sets the
  official 0.75 after 100 epochs of 626 steps.
- The training batch's phase-2 pivot slots: a row is all null pivots with that probability.
  4000 rows per step, seeds 0, 1, 2, at P = 1, 0.9 and 0.75: the count of null rows is within
  4 binomial standard deviations of 4000 P (exactly 4000 at P = 1), kept rows are never null,
  and loss() reads batch['step'] (metric pivot_drop = 1 at step 0 of the ramp).
- pivot_source='encode_lowres': the pivots equal the tokenizer's autoencoder on the image
  bicubic-downsampled to half its side (a per-pixel float64 numpy transcription of PyTorch's
  F.interpolate bicubic, from tests/tokenizers/test_resample.py), the grid tokens its encoding of
  the full image; a batch of cached latents only, or a tokenizer without an autoencoder, is
  refused naming the field and what it needs.
"""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.config import ConfigDict, load_config
from arjax.core.functional import FunctionalModel
from arjax.models import build_model
from arjax.models.himar import pivot_drop_prob
from arjax.tokenizers import build_tokenizer
from tests.models.test_himar import SMOKE, TINY
from tests.models.test_var import FrozenTokenizer, random_like
from tests.tokenizers.test_resample import torch_bicubic_ref

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RAMP = ["model.pivot_drop=0.75", "model.pivot_drop_warmup=10", "model.pivot_drop_every=2"]


def ramp_ref(step, final, warmup, every):
  """float64: the official 1 - step_stage2_rate min(1, epoch / step_warmup), epoch = step //
  every, step_warmup = warmup / every epochs, step_stage2_rate = 1 - final."""
  epoch = step // every
  return 1.0 - (1.0 - final) * min(1.0, epoch / (warmup / every))


def test_drop_ramp_matches_numpy():
  # The ImageNet config: 100 epochs of 626 steps, 0.75 at the end (official defaults).
  c = load_config(os.path.join(ROOT, "configs/imagenet256/himar.py"))
  m = c.model
  assert (m.pivot_drop, m.pivot_drop_warmup, m.pivot_drop_every) == (0.75, 62600, 626)
  cases = [(0.75, 62600, 626), (0.5, 10, 1), (0.75, 10, 2), (0.2, 7, 3)]
  for final, warmup, every in cases:
    steps = sorted({0, 1, every - 1, every, every + 1, warmup // 2, warmup - 1, warmup,
                    warmup + 1, 3 * warmup + 5} | {k * every for k in range(12)})
    got = np.asarray(jax.vmap(lambda s: pivot_drop_prob(s, final, warmup, every))(
        jnp.asarray(steps, jnp.int32)))
    want = np.array([ramp_ref(s, final, warmup, every) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert float(pivot_drop_prob(None, 0.75, 10, 2)) == 0.75    # no step (a direct call): final
  assert float(pivot_drop_prob(5, 0.6, 0, 1)) == pytest.approx(0.6)  # warmup 0: constant


@pytest.fixture(scope="module")
def ramp_model():
  # Abstract build and random parameters from the shapes: no eager initialisation.
  fm = FunctionalModel.abstract(lambda: build_model(load_config(SMOKE, TINY + RAMP)))
  return fm, random_like(fm.abstract_params, 0, 0.3)


def test_training_rows_are_dropped_at_the_ramp_rate(ramp_model):
  fm, params = ramp_model
  model = fm.bind(params)

  @jax.jit
  def slots_of(params, z1, m1, key, step):
    m = fm.bind(params)
    slots, dropped = m.phase2_pivot_slots(z1, m1, key, step, train=True)
    return slots, dropped, m.null_pivot_slots(1)[0]

  b, np_ = 4000, model.num_pivots
  z1 = jnp.asarray(np.random.default_rng(0).normal(size=(b, np_, model.dec_dim)), jnp.float32)
  m1 = jnp.ones((b, np_), bool)  # every pivot predicted: a kept row is never the null row
  for step, p in [(0, 1.0), (5, 1.0 - 0.25 * 4 / 10), (10, 0.75)]:
    assert float(model.drop_prob(step)) == pytest.approx(p, rel=1e-6)
    for seed in range(3):
      slots, dropped, null = slots_of(params, z1, m1, jax.random.key(seed), jnp.int32(step))
      dist = np.abs(np.asarray(slots) - np.asarray(null)[None]).max(axis=(1, 2))
      is_null = dist == 0.0
      np.testing.assert_array_equal(is_null, np.asarray(dropped))
      assert dist[~is_null].min(initial=1.0) > 1e-2  # kept rows are the projected z1
      k = int(is_null.sum())
      if p == 1.0:
        assert k == b
      else:
        assert abs(k - b * p) <= 4 * math.sqrt(b * p * (1 - p)), (step, seed, k, b * p)
  # Outside training nothing is dropped.
  _, dropped = model.phase2_pivot_slots(z1[:8], m1[:8], jax.random.key(0), 0, train=False)
  assert not np.asarray(dropped).any()


def test_loss_reads_the_training_step(ramp_model):
  fm, params = ramp_model
  rng = np.random.default_rng(2)
  batch = {"latents": jnp.asarray(rng.normal(size=(6, 16, 1)), jnp.float32),
           "label": jnp.arange(6, dtype=jnp.int32)}
  loss = jax.jit(lambda p, bt: fm.bind(p, rng=jax.random.key(1)).loss(bt, train=True)[1])
  assert float(loss(params, dict(batch, step=jnp.int32(0)))["pivot_drop"]) == 1.0


# -- pivot_source='encode_lowres' ----------------------------------------------------------------
AE = ["model.image_size=8", "model.ch=8", "model.ch_mult=[1,2]", "model.num_res_blocks=1",
      "model.z_channels=4", "model.quantizer.latent_dim=2", "model.mid_attn=True",
      "model.loss.disc_weight=0.0"]
LOWRES = ["model.pivot_grid=2", "model.backbone.dim=16",
          "model.head.width=16", "model.global_head.width=16", "model.pivot_source=encode_lowres"]


class KLTokenizer(FrozenTokenizer):
  def __init__(self, fm, variables):
    super().__init__(fm, variables)
    self.latent_dim = fm.bind(variables).quantizer.latent_dim


@pytest.fixture(scope="module")
def lowres():
  tconfig = load_config(os.path.join(ROOT, "configs/tokenizers/kl.py:smoke"), AE)
  tfm = FunctionalModel.abstract(lambda: build_model(tconfig, seed=1))
  tok = KLTokenizer(tfm, random_like(tfm.abstract_params, 3, 0.2))
  config = load_config(SMOKE, LOWRES)
  # The ImageNet config's tokenizer: cached KL latents, here a 4x4 grid of 2 channels.
  config.tokenizer = ConfigDict(dict(name="cached", vocab_size=0, grid=4, latent_dim=2))
  fm = FunctionalModel.abstract(
      lambda: build_model(config, tokenizer=build_tokenizer(config).with_decoder(tok)))
  return tok, fm, random_like(fm.abstract_params, 5, 0.1)


def test_encode_lowres_is_the_autoencoder_on_the_downsampled_image(lowres):
  tok, fm, params = lowres
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, size=(2, 8, 8, 1)).astype(np.uint8)
  batch = {"image": jnp.asarray(images), "label": jnp.array([1, 2], jnp.int32)}
  got = jax.jit(lambda p, bt: fm.bind(p).batch_pivots(bt, None))(params, batch)
  grid = jax.jit(lambda p, bt: fm.bind(p).batch_tokens(bt))(params, batch)
  # Directly: [-1, 1] floats, PyTorch bicubic 8 -> 4 px in float64, the same autoencoder.
  x = images.astype(np.float64) / 127.5 - 1.0
  small = np.stack([torch_bicubic_ref(x[i], 4, 4) for i in range(2)])
  ae_fm, ae_params = tok.fm, tok.variables
  want = jax.jit(lambda p, x: (lambda ae: ae.quantizer.encode(ae.latents(x)))(ae_fm.bind(p)))(
      ae_params, jnp.asarray(small, jnp.float32))
  want_grid = jax.jit(lambda p, im: ae_fm.bind(p).encode(im))(ae_params, jnp.asarray(images))
  assert got.shape == (2, 4, 2) and grid.shape == (2, 16, 2)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(grid), np.asarray(want_grid), rtol=1e-5, atol=1e-6)
  # The low-resolution encoding is not the average of the grid latent (the other source).
  avg = np.asarray(grid).reshape(2, 2, 2, 2, 2, 2).mean((2, 4)).reshape(2, 4, 2)
  assert np.abs(avg - np.asarray(got)).max() > 1e-3


def test_encode_lowres_refuses_a_batch_without_images(lowres):
  _, fm, params = lowres
  model = fm.bind(params)
  batch = {"latents": jnp.zeros((2, 16, 2)), "label": jnp.array([1, 2], jnp.int32)}
  with pytest.raises(ValueError, match=r"model.pivot_source='encode_lowres' needs "
                                       r"batch\['image'\] \(uint8 \[B, H, W, C\]\) or "
                                       r"batch\['pivots'\] \[B, 4, 2\]; the batch has "
                                       r"\['label', 'latents'\]"):
    model.batch_pivots(batch, batch["latents"])
  given = jnp.ones((2, 4, 2))  # cached pivots are taken as they are
  assert model.batch_pivots(dict(batch, pivots=given), batch["latents"]) is given


def test_encode_lowres_needs_an_autoencoder_and_a_known_source():
  fm = FunctionalModel.abstract(
      lambda: build_model(load_config(SMOKE, TINY + ["model.pivot_source=encode_lowres"])))
  model = fm.bind(fm.abstract_params)
  batch = {"image": jnp.zeros((2, 4, 4, 1), jnp.uint8), "label": jnp.array([1, 2], jnp.int32)}
  with pytest.raises(ValueError, match=r"model.pivot_source='encode_lowres' encodes a low-"
                                       r"resolution image with the tokenizer's autoencoder, but "
                                       r"PixelTokenizer has none"):
    model.batch_pivots(batch, None)
  with pytest.raises(ValueError, match=r"model.pivot_source='pixels'; expected one of "
                                       r"\['average', 'encode_lowres'\]"):
    build_model(load_config(SMOKE, TINY + ["model.pivot_source=pixels"]))
