"""'continuous_sjd' (speculative Jacobi decoding on the GMM head's density) against the exact law.

The model: a raster AR transformer with the GIVT GMM head (K = 3 components) over N = 4
continuous 1-channel tokens (pixel tokenizer, 2x2, continuous), fixed random weights scaled up so
the conditionals are far from the N(0, 1) initial drafts and depend on the earlier tokens. Its
conditionals p(x_i | x_<i) are mixtures known in closed form (one teacher-forced forward), so
the conditional CDFs u_i = F_i(x_i | x_<i) (Rosenblatt transform) of a sequence drawn from the
model's joint law are exactly i.i.d. U(0, 1). Each sampler draws 20,000 sequences at a fixed
seed (temperature 0.9, so the head's temperature enters the densities) in one jitted batch; the
checks, at alpha = 1e-3 each: a Kolmogorov-Smirnov test of every u_i against U(0, 1) (each
position's marginal) and a chi-square test of (u_i, u_{i+1}) on a 10 x 10 grid (99 dof; the
joint law of neighbours). Sequential and continuous SJD must pass; a sampler that accepts every
draft must fail. The residual draw (acceptance-rejection with proposal p) is checked alone
against the numerically integrated residual max(0, p - q) / Z, and its fallbacks at the try
bound are counted at the rate (1 - Z) they must have.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from arjax.core.functional import FunctionalModel
from arjax.heads.gmm import GMM
from arjax.models import build_model
from arjax.sampling import (SAMPLERS, ContinuousSJDSampler, SamplingConfig, SequentialSampler,
                            SpeculativeOptions)
from arjax.sampling.continuous_speculative import residual_draw
from tests.helpers import tiny_config

N, LABEL, DRAWS, ALPHA, SEED, TEMP = 4, 3, 20_000, 1e-3, 11, 0.9
WINDOW = 2  # < N - 1: the window slides and is moved back at the end of the sequence.
RESULTS = {}


def _config(**kw):
  c = tiny_config(tokenizer__continuous=True, tokenizer__channels=1, tokenizer__resolution=2,
                  model__backbone__num_heads=2, model__backbone__num_layers=1, mesh__data=1,
                  **kw)
  c.model.head = {"name": "gmm", "num_components": 3, "cfg_proposals": 16}
  return c


def contrasted(params, gain=12.0):
  """Initial weights give means ~ 0 and scales ~ 1 (the initial drafts' law); scaling the head,
  the token projection and the class embedding gives sharp, context-dependent mixtures."""
  params = jax.tree.map(lambda x: x, params)
  params["head"]["proj"]["kernel"] = params["head"]["proj"]["kernel"] * gain
  params["token_proj"]["kernel"] = params["token_proj"]["kernel"] * gain
  params["class_embed"]["embedding"] = params["class_embed"]["embedding"] * gain
  return params


class AlwaysAccept(ContinuousSJDSampler):
  """A deliberately biased control: every draft is accepted unchecked."""

  name = "always_accept"

  def log_accept_ratio(self, p, q, x):
    return jnp.full(x.shape[:1], jnp.inf)


@pytest.fixture(scope="module")
def tiny():
  fm = FunctionalModel(build_model(_config(), seed=0))
  params = contrasted(fm.initial_params())

  @jax.jit
  def cdfs(p, tokens):
    """tokens [B, N, 1] -> u [B, N]: each token's conditional CDF at the sampling temperature."""
    d = fm.bind(p).forward(tokens, jnp.full((tokens.shape[0],), LABEL, jnp.int32))
    z = (tokens[:, :, None, :] - d.means) / (d.scales * TEMP)      # [B, N, K, 1]
    return (jax.nn.softmax(d.logits, -1) * jax.scipy.stats.norm.cdf(z)[..., 0]).sum(-1)

  return fm, params, lambda t: np.asarray(cdfs(params, jnp.asarray(t)), np.float64)


def draws(tiny, name, reverse=False):
  key = (name, reverse)
  if key not in RESULTS:
    fm, params, _ = tiny
    labels = jnp.full((DRAWS,), LABEL, jnp.int32)
    sampling = SamplingConfig(temperature=TEMP)
    if name == "sequential":
      out = np.asarray(SequentialSampler(fm, sampling).sample_tokens(params, labels,
                                                                     jax.random.key(SEED))), None
    else:
      cls = {"continuous_sjd": ContinuousSJDSampler, "always_accept": AlwaysAccept}[name]
      keys = jax.random.split(jax.random.key(SEED), DRAWS)
      tokens, st = cls(fm, sampling, options=SpeculativeOptions(window=WINDOW)
                       ).sample_with_stats(params, labels, keys[::-1] if reverse else keys)
      out = np.asarray(tokens), st
    RESULTS[key] = out
  return RESULTS[key]


def uniformity(u):
  """(min KS p-value over positions, min chi-square p-value over neighbour pairs, summary)."""
  ks = [stats.kstest(u[:, i], "uniform").pvalue for i in range(N)]
  chi = []
  for i in range(N - 1):
    h, _, _ = np.histogram2d(u[:, i], u[:, i + 1], bins=10, range=[[0, 1], [0, 1]])
    e = len(u) / 100
    chi.append(stats.chi2.sf(((h - e) ** 2 / e).sum(), 99))
  return min(ks), min(chi), f"KS p {np.round(ks, 3)}, pair chi2 p {np.round(chi, 3)}"


@pytest.mark.parametrize("name", ["sequential", "continuous_sjd"])
def test_lossless_samplers_draw_the_exact_joint_law(tiny, name):
  _, _, cdfs = tiny
  tokens, st = draws(tiny, name)
  ks, chi, summary = uniformity(cdfs(tokens))
  extra = "" if st is None else (
      f"; batch passes {int(st['passes'])} (sequential {N}), mean row passes "
      f"{st['row_passes'].mean():.2f}, residual draws {int(st['residual_draws'].sum())}, "
      f"fallbacks {int(st['fallbacks'].sum())}")
  print(f"{name}: {summary}{extra}")
  assert ks > ALPHA and chi > ALPHA, summary
  if st is not None:
    # Speculation committed more than one token in some passes, and rejections (the residual
    # path) happened.
    assert st["row_passes"].mean() < N and st["residual_draws"].sum() > 100
    # The bound was hit on at most 1 % of the residual draws (each one counted).
    assert st["fallbacks"].sum() <= 0.01 * st["residual_draws"].sum()


def test_a_biased_sampler_fails_the_same_test(tiny):
  _, _, cdfs = tiny
  tokens, _ = draws(tiny, "always_accept")
  ks, chi, summary = uniformity(cdfs(tokens))
  print(f"always_accept: {summary}")
  assert min(ks, chi) < ALPHA, summary


def test_rows_accept_different_counts_and_keep_their_tokens_in_any_batch_position(tiny):
  tokens, st = draws(tiny, "continuous_sjd")
  assert len(np.unique(st["row_passes"])) >= 2, np.unique(st["row_passes"])
  # The same per-row keys in reverse order (each row now has other neighbours and another
  # batch position): the same tokens and passes per row, reversed.
  rev, st_rev = draws(tiny, "continuous_sjd", reverse=True)
  np.testing.assert_array_equal(rev[::-1], tokens)
  np.testing.assert_array_equal(st_rev["row_passes"][::-1], st["row_passes"])


def _residual_reference(p, q, grid):
  """float64 residual density max(0, p - q) on grid and its mass Z (1-D mixtures)."""
  dens = lambda g: (np.exp(np.asarray(g.logits[0], np.float64) - np.logaddexp.reduce(
      np.asarray(g.logits[0], np.float64)))[:, None] * stats.norm.pdf(
          grid[None], np.asarray(g.means[0, :, 0], np.float64)[:, None],
          np.asarray(g.scales[0, :, 0], np.float64)[:, None])).sum(0)
  r = np.maximum(dens(p) - dens(q), 0.0)
  return r, np.trapezoid(r, grid)


def test_residual_draw_is_exact_and_its_fallbacks_are_counted():
  p = GMM(jnp.array([[0.0, 0.5]]), jnp.array([[[-1.0], [1.5]]]), jnp.array([[[0.7], [0.5]]]),
          proposals=16)
  q = GMM(jnp.array([[0.0, 0.0]]), jnp.array([[[0.5], [0.5]]]), jnp.array([[[1.0], [1.0]]]),
          proposals=16)
  s = 20_000
  # One jitted function: the draws at 100 tries and the exact flags at 1 try.
  run = jax.jit(jax.vmap(lambda k: (residual_draw(k, p, q, 100)[0][0, 0],
                                    residual_draw(jax.random.fold_in(k, 1), p, q, 1)[1][0])))
  x, exact_one = run(jax.random.split(jax.random.key(0), s))
  x = np.asarray(x, np.float64)
  grid = np.linspace(-12, 12, 200_001)
  r, z = _residual_reference(p, q, grid)
  cdf = np.cumsum(r) * (grid[1] - grid[0]) / z
  ks = stats.kstest(x, lambda v: np.interp(v, grid, cdf)).pvalue
  # With one try, exactly the proposals refused fall back: rate 1 - Z (5 standard errors).
  rate = 1.0 - np.asarray(exact_one).mean()
  print(f"residual: Z = {z:.4f}, KS p = {ks:.3f}; fallback rate at 1 try {rate:.4f} vs "
        f"1 - Z = {1 - z:.4f}")
  assert ks > ALPHA
  assert abs(rate - (1 - z)) < 5 * np.sqrt(z * (1 - z) / s)


def test_registry_options_and_refusals():
  assert "continuous_sjd" in SAMPLERS
  abstract = lambda c: FunctionalModel.abstract(lambda: build_model(c, seed=0))  # no weights
  fm = abstract(_config())
  with pytest.raises(ValueError, match=r"window=0; expected >= 1"):
    ContinuousSJDSampler(fm, SamplingConfig(), options=SpeculativeOptions(window=0))
  with pytest.raises(ValueError, match=r"window=4; expected <= N - 1 = 3"):
    ContinuousSJDSampler(fm, SamplingConfig(), options=SpeculativeOptions(window=N))
  with pytest.raises(ValueError, match=r"max_tries=0; expected >= 1"):
    ContinuousSJDSampler(fm, SamplingConfig(), options=SpeculativeOptions(window=2, max_tries=0))
  with pytest.raises(ValueError, match=r"max_tries=0; expected >= 1"):
    ContinuousSJDSampler(fm, SamplingConfig(max_tries=0))
  with pytest.raises(ValueError, match=r"temperature=0.0; sampler 'continuous_sjd' needs "
                                       r"temperature > 0"):
    ContinuousSJDSampler(fm, SamplingConfig(temperature=0.0))
  with pytest.raises(ValueError, match=r"cfg_scale=2.0; sampler 'continuous_sjd' .* no "
                                       r"tractable one"):
    ContinuousSJDSampler(fm, SamplingConfig(cfg_scale=2.0))
  with pytest.raises(ValueError, match=r"\['max_tries'\] do not apply to sampler 'sjd'"):
    SAMPLERS.get("sjd")(abstract(tiny_config(mesh__data=1)), SamplingConfig(max_tries=5))
  # A head without a tractable density, by name (the diffusion head: its own test file).
  for head in ("flow",):
    c = _config()
    c.model.head = {"name": head, "width": 16, "depth": 1}
    with pytest.raises(ValueError, match=rf"head '{head}' has no tractable density"):
      ContinuousSJDSampler(abstract(c), SamplingConfig())
  # A categorical model goes to 'sjd'; 'sjd' refuses the GMM model and names this sampler.
  with pytest.raises(ValueError, match=r"draws discrete tokens; 'continuous_sjd'"):
    ContinuousSJDSampler(abstract(tiny_config(mesh__data=1)), SamplingConfig())
  with pytest.raises(ValueError, match=r"\(continuous tokens: 'continuous_sjd'\)"):
    SAMPLERS.get("sjd")(fm, SamplingConfig())
  # A bidirectional order is refused by name (shown on a stand-in model: no build needed).
  from types import SimpleNamespace
  stand_in = SimpleNamespace(order=SimpleNamespace(name="masked", mask_kind="bidirectional"),
                             decode_tokens=None, head=fm.bind(fm.abstract_params).head)
  assert ContinuousSJDSampler.cannot_run(stand_in).startswith(
      "order 'masked' uses bidirectional attention masks")
