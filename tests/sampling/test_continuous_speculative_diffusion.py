"""'continuous_sjd' on the diffusion head (whole-trajectory density ratios) against the
sequential sampler.

The model: a raster AR transformer with MAR's diffusion head (width 16, depth 1, S = 4 respaced
DDPM steps) over N = 4 continuous 1-channel tokens (pixel tokenizer, 2x2), fixed random weights
with the head's zero-initialised output layers replaced by random ones and the token projection
and class embedding scaled up, so each token's law depends on the earlier tokens. The head's
law has no closed form, so the check is two-sample: 20,000 sequences from the sequential
sampler against 20,000 from the speculative one (temperature 0.9, window 2 < N - 1 so the
window slides), at alpha = 1e-3 each: a two-sample Kolmogorov-Smirnov test per position and a
chi-square test of homogeneity of the neighbour pairs (x_i, x_{i+1}) binned on the 10 x 10 grid
of the sequential sample's deciles (2 x 100 table, 99 dof). A sampler that accepts every draft
must fail the same test.

What is exact: a draft is a whole trajectory y_S ... y_1, y_0 (y_0 the token), tested with the
ratio of the trajectory's joint densities under the target's and the draft's chains; the last
reverse step adds no noise (ADM / MAR), so its factor is a ratio of point masses: 0 unless the
target's and the draft's last means land on the same float. With a trained head (tokens of
order 1) that happens only where the draft's context is the committed one; these random
weights give tokens of order 1e3 - 1e4, where the last step's eps term is below float32
resolution, so some drafts with another context land on the same float and are tested by the
stochastic steps' ratio (mean row passes just under N = 4; a few hundred of about 45,000
residual draws fall back at max_tries = 4, counted).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from arjax.core.functional import FunctionalModel
from arjax.models import build_model
from arjax.sampling import ContinuousSJDSampler, SamplingConfig, SequentialSampler, SpeculativeOptions
from tests.helpers import tiny_config

N, LABEL, DRAWS, ALPHA, SEED, TEMP, WINDOW, TRIES = 4, 3, 20_000, 1e-3, 5, 0.9, 2, 4
RESULTS = {}


def _config():
  c = tiny_config(tokenizer__continuous=True, tokenizer__channels=1, tokenizer__resolution=2,
                  model__backbone__num_heads=2, model__backbone__num_layers=1, mesh__data=1)
  c.model.head = {"name": "diffusion", "width": 16, "depth": 1, "num_sampling_steps": 4}
  return c


class AlwaysAccept(ContinuousSJDSampler):
  """A deliberately biased control: every draft trajectory is accepted unchecked."""

  name = "always_accept"

  def log_accept_ratio(self, p, q, x):
    return jnp.full(x.shape[:1], jnp.inf)


@pytest.fixture(scope="module")
def tiny():
  fm = FunctionalModel(build_model(_config(), seed=0))
  params = jax.tree.map(lambda x: x, fm.initial_params())
  ks = jax.random.split(jax.random.key(1), 2)
  net = params["head"]["net"]
  net["final"]["kernel"] = 0.05 * jax.random.normal(ks[0], net["final"]["kernel"].shape)
  net["final_ada"]["kernel"] = 0.3 * jax.random.normal(ks[1], net["final_ada"]["kernel"].shape)
  for name, gain in (("token_proj", 8.0), ("class_embed", 4.0)):
    leaf = "kernel" if name == "token_proj" else "embedding"
    params[name][leaf] = params[name][leaf] * gain
  return fm, params


def draws(tiny, name):
  if name not in RESULTS:
    fm, params = tiny
    labels = jnp.full((DRAWS,), LABEL, jnp.int32)
    sampling = SamplingConfig(temperature=TEMP)
    if name == "sequential":
      out = np.asarray(SequentialSampler(fm, sampling).sample_tokens(
          params, labels, jax.random.key(SEED)))[..., 0], None
    else:
      cls = {"continuous_sjd": ContinuousSJDSampler, "always_accept": AlwaysAccept}[name]
      tokens, st = cls(fm, sampling, options=SpeculativeOptions(window=WINDOW, max_tries=TRIES)
                       ).sample_with_stats(params, labels, jax.random.key(SEED + 1))
      out = np.asarray(tokens)[..., 0], st
    RESULTS[name] = out
  return RESULTS[name]


def two_sample(a, b):
  """(min KS p over positions, min pair chi-square p, summary) of samples a, b [S, N]."""
  ks = [stats.ks_2samp(a[:, i], b[:, i]).pvalue for i in range(N)]
  chi = []
  for i in range(N - 1):
    edges = [np.quantile(a[:, k], np.linspace(0, 1, 11)[1:-1]) for k in (i, i + 1)]
    cell = lambda x: np.digitize(x[:, i], edges[0]) * 10 + np.digitize(x[:, i + 1], edges[1])
    table = np.stack([np.bincount(cell(a), minlength=100), np.bincount(cell(b), minlength=100)])
    table = table[:, table.sum(0) > 0]   # dependent neighbours leave some cells empty.
    chi.append(stats.chi2_contingency(table, correction=False).pvalue)   # dof: cells - 1
  return min(ks), min(chi), f"KS p {np.round(ks, 3)}, pair chi2 p {np.round(chi, 3)}"


def test_the_model_depends_on_context(tiny):
  seq, _ = draws(tiny, "sequential")
  # Neighbouring tokens are dependent (else the pair test would test nothing).
  assert abs(stats.spearmanr(seq[:, 1], seq[:, 2]).statistic) > 0.1


def test_continuous_sjd_draws_the_sequential_law(tiny):
  seq, _ = draws(tiny, "sequential")
  spec, st = draws(tiny, "continuous_sjd")
  ks, chi, summary = two_sample(seq, spec)
  print(f"continuous_sjd vs sequential: {summary}; passes {int(st['passes'])}, row passes "
        f"{np.unique(st['row_passes'])}, residual draws / row "
        f"{st['residual_draws'].mean():.2f}, fallbacks {int(st['fallbacks'].sum())}")
  assert ks > ALPHA and chi > ALPHA, summary
  # Rejections happened (the residual path ran) and at most 1 % of the residual draws hit
  # the try bound (each one counted).
  assert st["residual_draws"].sum() > 1000
  assert st["fallbacks"].sum() <= 0.01 * st["residual_draws"].sum()


def test_a_biased_sampler_fails_the_same_test(tiny):
  seq, _ = draws(tiny, "sequential")
  biased, st = draws(tiny, "always_accept")
  ks, chi, summary = two_sample(seq, biased)
  print(f"always_accept vs sequential: {summary}; passes {int(st['passes'])}")
  assert min(ks, chi) < ALPHA, summary


def test_rows_keep_their_tokens_in_any_batch_position(tiny):
  fm, params = tiny
  sampler = ContinuousSJDSampler(fm, SamplingConfig(temperature=TEMP),
                                 options=SpeculativeOptions(window=WINDOW, max_tries=TRIES))
  keys = jax.random.split(jax.random.key(3), 8)
  labels = jnp.arange(8, dtype=jnp.int32)
  a, st = sampler.sample_with_stats(params, labels, keys)
  b, st_b = sampler.sample_with_stats(params, labels[::-1], keys[::-1])
  np.testing.assert_array_equal(np.asarray(b)[::-1], np.asarray(a))
  np.testing.assert_array_equal(st_b["row_passes"][::-1], st["row_passes"])


def test_options_and_refusals():
  fm = FunctionalModel.abstract(lambda: build_model(_config(), seed=0))
  with pytest.raises(ValueError, match=r"window=4; expected <= N - 1 = 3"):
    ContinuousSJDSampler(fm, SamplingConfig(), options=SpeculativeOptions(window=N))
  with pytest.raises(ValueError, match=r"max_tries=0; expected >= 1"):
    ContinuousSJDSampler(fm, SamplingConfig(max_tries=0))
  with pytest.raises(ValueError, match=r"cfg_scale=2.0; sampler 'continuous_sjd' .* diffusion "
                                       r"head's guided step laws"):
    ContinuousSJDSampler(fm, SamplingConfig(cfg_scale=2.0))
  c = _config()
  c.model.head = {"name": "flow", "width": 16, "depth": 1}
  with pytest.raises(ValueError, match=r"head 'flow' has no tractable density"):
    ContinuousSJDSampler(FunctionalModel.abstract(lambda: build_model(c, seed=0)),
                         SamplingConfig())
