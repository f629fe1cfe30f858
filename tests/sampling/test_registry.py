"""Samplers by name over one state, on a categorical and on a continuous (GIVT GMM) raster
model: KV-cached decoding of continuous tokens equals recomputation, greedy GMM decoding equals
a recompute-everything reference, guidance runs, and the bad-name / bad-sampler messages."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.sampling import (SAMPLERS, CachedGroupSampler, SamplingConfig, SequentialSampler,
                            build_sampler)
from tests.helpers import tiny_config, tiny_model

C, GRID = 2, 3


def givt_config():
  c = tiny_config(tokenizer__name="cached", tokenizer__vocab_size=0, tokenizer__grid=GRID,
                  tokenizer__latent_dim=C)
  c.model.head = {"name": "gmm", "num_components": 3, "cfg_proposals": 16}
  return c


@pytest.fixture(scope="module")
def givt():
  fm, config = tiny_model(givt_config())
  return fm, fm.initial_params(), config


def test_continuous_kv_decoding_equals_recomputation_and_loss_reads_latents(givt):
  fm, params, _ = givt
  n = GRID * GRID
  x = jax.random.normal(jax.random.key(0), (2, n, C))
  labels = jnp.array([3, 10], jnp.int32)

  @jax.jit
  def both(p):
    model = fm.bind(p)
    full = model.forward(x, labels)
    caches = model.init_cache(2)
    first, caches = model.decode_prefix(labels, caches)
    rest, _ = model.decode_tokens(x[:, :-1], 0, caches)
    step = jax.tree.map(lambda a, b: jnp.concatenate([a, b], 1), first, rest)
    loss, metrics = model.loss({"latents": x, "label": labels}, train=False)
    return full, step, loss, metrics

  full, step, loss, metrics = both(params)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(step)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(loss), -float(full.log_prob(x).mean()), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["bits_per_channel"]),
                             float(loss) / (C * np.log(2.0)), rtol=1e-5)
  assert "accuracy" not in metrics


def test_greedy_gmm_decoding_equals_recomputed_reference_and_cfg_runs(givt):
  fm, params, _ = givt
  labels = jnp.array([1, 4], jnp.int32)
  tokens = np.asarray(SequentialSampler(fm, SamplingConfig(temperature=0.0)).sample_tokens(
      params, labels, jax.random.key(0)))
  assert tokens.shape == (2, GRID * GRID, C) and tokens.dtype == np.float32
  forward = jax.jit(lambda t: fm.bind(params).forward(t, labels))
  ref = np.zeros_like(tokens)
  for i in range(ref.shape[1]):  # the mean of the most likely component, cell by cell.
    d = forward(jnp.asarray(ref))
    k = np.asarray(jnp.argmax(d.logits[:, i], -1))
    ref[:, i] = np.asarray(d.means[:, i])[np.arange(2), k]
  np.testing.assert_allclose(tokens, ref, rtol=1e-5, atol=1e-5)
  guided = SequentialSampler(fm, SamplingConfig(cfg_scale=2.0, temperature=0.95))
  a = np.asarray(guided.sample_tokens(params, labels, jax.random.key(1)))
  b = np.asarray(guided.sample_tokens(params, labels, jax.random.key(1)))
  np.testing.assert_array_equal(a, b)
  assert np.isfinite(a).all() and np.abs(a - tokens).max() > 1e-3


def test_default_sampler_comes_from_the_model_and_bad_names_are_listed(givt):
  fm, _, config = givt
  assert isinstance(build_sampler(fm, SamplingConfig(), config), SequentialSampler)
  # Every registered sampler is listed (the list grows with the samplers; 'sequential' and
  # 'order' are among them).
  assert {"sequential", "order", "cached_groups"} <= set(SAMPLERS.names())
  with pytest.raises(KeyError, match=r"unknown sampler 'jacobi' \(config field 'sampling.name'\); "
                                     + re.escape(f"expected one of {SAMPLERS.names()}")):
    build_sampler(fm, SamplingConfig(name="jacobi"))
  with pytest.raises(ValueError, match=r"sampler 'cached_groups' cannot run model RasterAR with "
                                       r"order 'raster': .*samplers that can: "
                                       r"\['continuous_sjd', 'sequential'\]"):
    CachedGroupSampler(fm, SamplingConfig())
  with pytest.raises(ValueError, match=r"sampling options \['top_k'\] do not apply to head "
                                       r"GMMHead \(it takes temperature only\)"):
    SequentialSampler(fm, SamplingConfig(top_k=5))


def test_config_sampling_name_picks_the_sampler():
  fm, config = tiny_model(tiny_config(sampling__name="order"))
  with pytest.raises(ValueError, match=r"sampler 'order' cannot run model RasterAR.*samplers "
                                       r"that can: \['gsd', 'mc_sjd', 'sequential', 'sjd'\]"):
    build_sampler(fm, SamplingConfig(), config)
