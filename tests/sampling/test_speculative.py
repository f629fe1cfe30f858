"""Speculative decoding (sjd, mc_sjd, gsd) against the exact joint law of a tiny model.

The model: a raster AR transformer over N = 5 tokens of vocabulary V = 3 (pixel tokenizer at
resolution 1 with 5 channels), random weights scaled up so its conditionals are far from
uniform and depend on the earlier tokens. Its joint law over all V^N = 243 sequences is
enumerated exactly from its conditionals (one teacher-forced forward over every sequence,
products in float64). Each sampler draws 20,000 sequences at a fixed seed in one jitted batch;
a chi-square goodness-of-fit test (alpha = 1e-3; cells with expected count < 5 pooled into one;
dof = cells - 1) must accept sequential, SJD and MC-SJD and reject a sampler that accepts every
draft. GSD is lossy by design: its total-variation distance is measured and printed.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from arjax.core.functional import FunctionalModel
from arjax.models import build_model
from arjax.sampling import (SAMPLERS, GSDSampler, MCSJDSampler, SamplingConfig, SJDSampler,
                            SequentialSampler, SpeculativeOptions)
from tests.helpers import tiny_config, tiny_model

V, N, LABEL, DRAWS, ALPHA, SEED = 3, 5, 3, 20_000, 1e-3, 7
WINDOW = 3  # < N - 1, so the window slides and is moved back at the end of the sequence.
RESULTS = {}  # sampler name -> (tokens [DRAWS, N], stats): shared by the tests below.


def contrasted(params, gain=25.0):
  """Initial weights have logits ~ 0.02 (near-uniform laws); scaling the head and the token and
  class embeddings gives sharp, context-dependent conditionals."""
  params = jax.tree.map(lambda x: x, params)
  params["head"]["proj"]["kernel"] = params["head"]["proj"]["kernel"] * gain
  params["token_embed"]["embedding"] = params["token_embed"]["embedding"] * gain
  params["class_embed"]["embedding"] = params["class_embed"]["embedding"] * gain
  return params


@pytest.fixture(scope="module")
def tiny():
  fm, _ = tiny_model(tiny_config(tokenizer__levels=V, tokenizer__resolution=1,
                                 tokenizer__channels=N, model__backbone__num_heads=2,
                                 mesh__data=1))
  params = contrasted(fm.initial_params())
  seqs = np.array(list(itertools.product(range(V), repeat=N)), np.int32)  # [V^N, N]

  @jax.jit
  def log_conditionals(p):
    logits = fm.bind(p).logits(jnp.asarray(seqs), jnp.full((len(seqs),), LABEL, jnp.int32))
    return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), seqs[..., None], -1)[..., 0]

  joint = np.exp(np.asarray(log_conditionals(params), np.float64).sum(1))  # [V^N]
  joint /= joint.sum()  # float32 softmax rounding (~1e-7)
  # Contrast: far from uniform (1/243 = 0.004), and x_1's law depends on x_0.
  assert joint.max() > 0.1 and (joint < 1e-3).sum() > 50
  return fm, params, joint


def cell_index(tokens):
  return (np.asarray(tokens) * V ** np.arange(N - 1, -1, -1)).sum(1)


def chi_square(tokens, joint):
  """(statistic, dof, p-value, total-variation distance) of the draws against the joint law;
  cells with expected count < 5 are pooled into one cell (folded into the smallest other cell
  if the pool itself expects < 5)."""
  observed = np.bincount(cell_index(tokens), minlength=joint.size).astype(np.float64)
  n = observed.sum()
  expected = n * joint
  small = expected < 5
  o, e = list(observed[~small]), list(expected[~small])
  if small.any():
    if expected[small].sum() >= 5:
      o.append(observed[small].sum())
      e.append(expected[small].sum())
    else:
      i = int(np.argmin(e))
      o[i] += observed[small].sum()
      e[i] += expected[small].sum()
  o, e = np.asarray(o), np.asarray(e)
  stat = float(((o - e) ** 2 / e).sum())
  dof = len(o) - 1
  tv = 0.5 * float(np.abs(observed / n - joint).sum())
  return stat, dof, float(stats.chi2.sf(stat, dof)), tv


class AlwaysAccept(SJDSampler):
  """A deliberately biased control: every draft is accepted (the uniform initial drafts of the
  whole window are committed unchecked)."""

  name = "always_accept"

  def accept_ratio(self, p, q, x):
    return jnp.ones(x.shape, jnp.float32)


SPECULATIVE = {"sjd": SJDSampler, "mc_sjd": MCSJDSampler, "gsd": GSDSampler,
               "always_accept": AlwaysAccept}


def draws(tiny, name):
  if name not in RESULTS:
    fm, params, _ = tiny
    labels = jnp.full((DRAWS,), LABEL, jnp.int32)
    if name == "sequential":
      tokens = SequentialSampler(fm, SamplingConfig()).sample_tokens(params, labels,
                                                                     jax.random.key(SEED))
      RESULTS[name] = (np.asarray(tokens), None)
    else:
      sampler = SPECULATIVE[name](fm, SamplingConfig(),
                                  options=SpeculativeOptions(window=WINDOW, gsd_radius=1,
                                                             gsd_tol=0.3))
      tokens, st = sampler.sample_with_stats(params, labels, jax.random.key(SEED))
      RESULTS[name] = (np.asarray(tokens), st)
  return RESULTS[name]


@pytest.mark.parametrize("name", ["sequential", "sjd", "mc_sjd"])
def test_lossless_samplers_pass_the_chi_square_test(tiny, name):
  _, _, joint = tiny
  tokens, st = draws(tiny, name)
  stat, dof, p, tv = chi_square(tokens, joint)
  passes = "" if st is None else (f", batch passes {int(st['passes'])} (sequential: {N}), "
                                  f"mean row passes {st['row_passes'].mean():.2f}")
  print(f"{name}: chi2 = {stat:.1f}, dof = {dof}, p = {p:.3f}, TV = {tv:.4f}{passes}")
  assert p > ALPHA, f"{name}: chi2 = {stat:.1f} on {dof} dof, p = {p:.2e} < alpha = {ALPHA}"
  if st is not None:
    # Speculation committed more than one token in some passes.
    assert st["row_passes"].mean() < N


def test_a_biased_sampler_fails_the_same_test(tiny):
  _, _, joint = tiny
  tokens, _ = draws(tiny, "always_accept")
  stat, dof, p, tv = chi_square(tokens, joint)
  print(f"always_accept: chi2 = {stat:.1f}, dof = {dof}, p = {p:.3g}, TV = {tv:.4f}")
  assert p < ALPHA


def test_gsd_total_variation_is_measured(tiny):
  _, _, joint = tiny
  tokens, st = draws(tiny, "gsd")
  stat, dof, p, tv = chi_square(tokens, joint)
  _, _, _, tv_sjd = chi_square(draws(tiny, "sjd")[0], joint)
  print(f"gsd (radius 1, tol 0.3): TV = {tv:.4f} (sjd at the same draws: {tv_sjd:.4f}), "
        f"chi2 = {stat:.1f} on {dof} dof, mean row passes {st['row_passes'].mean():.2f}")
  assert np.isfinite(tv) and 0.0 <= tv < 1.0


def test_rows_accepting_different_counts_match_each_row_alone(tiny):
  fm, params, _ = tiny
  tokens, st = draws(tiny, "sjd")
  rows = st["row_passes"]
  # Rows that needed different numbers of passes (so accepted different numbers per pass).
  pick = [int(np.argmax(rows == r)) for r in np.unique(rows)]
  assert len(pick) >= 3, f"row passes {np.unique(rows)}"
  keys = jax.random.split(jax.random.key(SEED), DRAWS)  # the per-row keys of the batch.
  sampler = SJDSampler(fm, SamplingConfig(), options=SpeculativeOptions(window=WINDOW))
  for r in pick:
    alone, st1 = sampler.sample_with_stats(params, jnp.full((1,), LABEL, jnp.int32),
                                           keys[r:r + 1])
    np.testing.assert_array_equal(np.asarray(alone)[0], tokens[r])
    assert int(st1["row_passes"][0]) == rows[r] == int(st1["passes"])


def test_greedy_speculative_decoding_equals_sequential_greedy_with_cfg(tiny):
  fm, params, _ = tiny
  labels = jnp.arange(8, dtype=jnp.int32)
  sampling = SamplingConfig(temperature=0.0, cfg_scale=2.0)
  want = np.asarray(SequentialSampler(fm, sampling).sample_tokens(params, labels,
                                                                  jax.random.key(0)))
  got, st = MCSJDSampler(fm, sampling, options=SpeculativeOptions(window=N - 1)
                         ).sample_with_stats(params, labels, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(got), want)
  assert int(st["passes"]) <= N


def test_registry_options_and_refusals(tiny):
  fm, _, _ = tiny
  for name in ("sjd", "mc_sjd", "gsd"):
    assert name in SAMPLERS
  with pytest.raises(ValueError, match=r"window=5; expected <= N - 1 = 4"):
    SJDSampler(fm, SamplingConfig(), options=SpeculativeOptions(window=N))
  with pytest.raises(ValueError, match=r"window=0; expected >= 1"):
    SJDSampler(fm, SamplingConfig(), options=SpeculativeOptions(window=0))
  with pytest.raises(ValueError, match=r"gsd_radius=-1"):
    GSDSampler(fm, SamplingConfig(), options=SpeculativeOptions(window=2, gsd_radius=-1))
  with pytest.raises(ValueError, match=r"gsd_tol=0.0; expected a value in \(0, 1\]"):
    GSDSampler(fm, SamplingConfig(), options=SpeculativeOptions(window=2, gsd_tol=0.0))
  with pytest.raises(ValueError, match=r"temperature=-1.0; expected >= 0"):
    SJDSampler(fm, SamplingConfig(temperature=-1.0))
  with pytest.raises(ValueError, match=r"rng has shape \(3,\)"):
    SJDSampler(fm, SamplingConfig(), options=SpeculativeOptions(window=2)).row_keys(
        jax.random.split(jax.random.key(0), 3), 2)
  # A bidirectional order (MaskGIT) is refused by name; a causal raster-like one is runnable.
  abstract = lambda c: FunctionalModel.abstract(lambda: build_model(c, seed=0))  # no weights
  masked = abstract(tiny_config(model__name="ordered_ar", order__name="masked", mesh__data=1))
  with pytest.raises(ValueError, match=r"sampler 'mc_sjd' cannot run model OrderedAR with order "
                                       r"'masked': order 'masked' uses bidirectional attention"):
    MCSJDSampler(masked, SamplingConfig())
  ordered = abstract(tiny_config(model__name="ordered_ar", mesh__data=1))
  assert SJDSampler.cannot_run(ordered.bind(ordered.abstract_params)) is None
