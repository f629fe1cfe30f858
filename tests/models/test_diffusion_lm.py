"""Masked diffusion (MDLM) and block diffusion (BD3-LM): the 2L x 2L mask against a loop, the
NELBO estimator against exact enumeration on a toy model, the bound against the exact NLL, and
the limits b = 1 (AR) and b = L (masked diffusion)."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from arjax.core.functional import FunctionalModel
from arjax.kernels.masks import MaskSpec, block_diffusion_mask
from arjax.models.diffusion_lm import DiffusionLM, DiffusionLMFields, nelbo_exact
from arjax.nn.transformer import TransformerConfig

V, L = 3, 4
BACKBONE = TransformerConfig(num_layers=2, num_heads=2, dim=32, mlp_dim=64, position="rope1d")


def make(objective, block_size=L, seq_len=L, vocab=V, **kw):
  fields = DiffusionLMFields(objective=objective, vocab_size=vocab, seq_len=seq_len,
                             block_size=block_size, **kw)
  return FunctionalModel(DiffusionLM(fields, BACKBONE, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def peaked_params():
  """Random parameters with the head scaled up, so predictions depend strongly on the context
  (near-uniform predictions would make NELBO and NLL coincide)."""
  p = make("mdlm").initial_params()
  p["head"]["proj"]["kernel"] = p["head"]["proj"]["kernel"] * 150.0
  return p


def all_sequences():
  return np.array(list(itertools.product(range(V), repeat=L)), np.int32)


def test_block_diffusion_mask_matches_loop():
  for n, b in [(8, 1), (8, 2), (8, 4), (8, 8), (6, 3)]:
    dense = np.asarray(block_diffusion_mask(n, b).dense[0, 0])
    ref = np.zeros((2 * n, 2 * n), bool)
    for i in range(2 * n):
      for j in range(2 * n):
        bi, bj = (i % n) // b, (j % n) // b
        if i < n and j < n:      # noisy -> noisy: same block only, both directions
          ref[i, j] = bi == bj
        elif i < n:              # noisy -> clean: strictly earlier blocks
          ref[i, j] = bj < bi
        elif j >= n:             # clean -> clean: block-causal
          ref[i, j] = bj <= bi
    np.testing.assert_array_equal(dense, ref, err_msg=f"L={n} b={b}")


def test_block_size_not_dividing_length_names_the_field():
  with pytest.raises(ValueError, match="block_size=3 does not divide"):
    block_diffusion_mask(8, 3)
  with pytest.raises(ValueError) as e:
    DiffusionLMFields(objective="bd3lm", seq_len=8, block_size=3)
  assert str(e.value) == "model.block_size=3 does not divide model.seq_len=8"


def exact_nll(logits_fn, seqs, block_size):
  """-log p(x) of the model's generative process: per block, tokens revealed one at a time in
  a uniformly random order, each drawn from p(x_i | current x_t) (the K -> infinity limit of
  ancestral sampling); p(block) is the mean over the b! orders of the product."""
  n = seqs.shape[1]
  total = np.zeros(len(seqs))
  for start in range(0, n, block_size):
    idx = list(range(start, start + block_size))
    logp_cache = {}

    def logp(masked_set):
      if masked_set not in logp_cache:
        m = np.zeros(n, bool)
        m[list(masked_set)] = True
        xt = np.where(m[None], V, seqs)
        lp = np.asarray(jax.nn.log_softmax(logits_fn(jnp.asarray(xt), jnp.asarray(seqs)), -1),
                        np.float64)
        logp_cache[masked_set] = np.take_along_axis(lp, seqs[..., None], -1)[..., 0]
      return logp_cache[masked_set]

    probs = []
    for order in itertools.permutations(idx):
      s = np.zeros(len(seqs))
      for k, i in enumerate(order):
        s += logp(frozenset(order[k:]))[:, i]
      probs.append(s)
    probs = np.stack(probs)
    mx = probs.max(0)
    total -= mx + np.log(np.exp(probs - mx).mean(0))
  return total


@pytest.mark.parametrize("objective,block", [("mdlm", L), ("bd3lm", 2)])
def test_nelbo_unbiased_and_upper_bound(peaked_params, objective, block):
  fm = make(objective, block_size=block)
  model = fm.bind(peaked_params)
  logits_fn = jax.jit(lambda xt, x0: model.denoise_logits(xt, x0))
  seqs = all_sequences()
  nelbo = nelbo_exact(logits_fn, seqs, block, V)
  nll = exact_nll(logits_fn, seqs, block)
  # The exact model distribution is normalised, and the bound holds for every sequence with a
  # visible gap somewhere (Jensen over the reveal orders).
  np.testing.assert_allclose(np.exp(-nll).sum(), 1.0, atol=1e-5)
  assert np.all(nelbo >= nll - 1e-6), (nelbo - nll).min()
  assert (nelbo - nll).max() > 0.05
  # Monte Carlo: 8 sequences, 3000 t / mask draws each (t ~ U[0, 1], stratified over the
  # batch); the mean must be within 4 standard errors of the exact sum (seed 0).
  pick = seqs[[0, 5, 11, 23, 40, 57, 66, 80]]
  reps = 3000
  x = jnp.asarray(np.repeat(pick, reps, 0))
  est = np.asarray(jax.jit(lambda x, k: model.nelbo_terms(x, k))(x, jax.random.key(0)),
                   np.float64).reshape(len(pick), reps)
  mean, se = est.mean(1), est.std(1) / math.sqrt(reps)
  want = nelbo[[0, 5, 11, 23, 40, 57, 66, 80]]
  assert np.all(np.abs(mean - want) < 4 * se + 1e-4), (mean, want, se)


def test_block_size_one_is_the_ar_loss(peaked_params):
  """b = 1 with t = 1 (every noisy token masked, weight 1) equals the AR loss of the same
  network and parameters: -sum_i log p(x_i | x_<i), computed by L separate causal passes on
  [x_0 .. x_{i-1}, MASK] (a loop, no 2L mask)."""
  n = L
  fm = make("bd3lm", block_size=1, seq_len=n, noise_min=1.0, noise_max=1.0)
  model = fm.bind(peaked_params)
  x = jax.random.randint(jax.random.key(1), (3, n), 0, V)
  loss = jax.jit(lambda x: model.nelbo_terms(x, jax.random.key(2), 1.0, 1.0))(x)
  last = jax.jit(lambda inp, pos: model._run(inp, pos, MaskSpec(kind="causal"))[0][:, -1])
  ref = np.zeros(3)
  for i in range(n):
    inp = jnp.concatenate([x[:, :i], jnp.full((3, 1), V, x.dtype)], 1)
    pos = jnp.broadcast_to(jnp.arange(i + 1), (3, i + 1))
    ref += np.asarray(optax.softmax_cross_entropy_with_integer_labels(last(inp, pos), x[:, i]))
  np.testing.assert_allclose(np.asarray(loss), ref, rtol=1e-5)
  # The training loss with the clipped range at t = 1 is this AR loss per token.
  batch_loss, _ = jax.jit(lambda p, x: fm.bind(p, rng=jax.random.key(4)).loss(
      {"tokens": x}, train=True))(peaked_params, x)
  np.testing.assert_allclose(float(batch_loss), ref.mean() / n, rtol=1e-5)


def test_block_size_l_is_masked_diffusion(peaked_params):
  bd3 = make("bd3lm", block_size=L).bind(peaked_params)
  mdlm = make("mdlm").bind(peaked_params)
  x = jnp.asarray(all_sequences()[::7])
  key = jax.random.key(3)
  xt, _, _ = mdlm.corrupt(key, x, mdlm.draw_t(key, x.shape[0], 0.0, 1.0))
  both = jax.jit(lambda xt, x: (bd3.bd3_logits(xt, x, L), mdlm.mdlm_logits(xt),
                                bd3.nelbo_terms(x, key), mdlm.nelbo_terms(x, key)))
  lb, lm, nb, nm = both(xt, x)
  np.testing.assert_allclose(np.asarray(lb), np.asarray(lm), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(nb), np.asarray(nm), rtol=1e-5)


def test_ar_checkpoint_restores_into_block_model():
  """SDAR's conversion: the AR model's parameter tree is the block model's (same names,
  shapes, dtypes), so an AR checkpoint restores into it and training continues."""
  ar, bd3 = make("ar", seq_len=8), make("bd3lm", block_size=4, seq_len=8)
  shapes = lambda t: jax.tree.map(lambda a: (a.shape, str(a.dtype)), t)
  assert shapes(ar.abstract_params) == shapes(bd3.abstract_params)
  loss, _ = jax.jit(lambda p, x: bd3.bind(p, rng=jax.random.key(0)).loss(
      {"tokens": x}, train=True))(ar.initial_params(), jnp.zeros((2, 8), jnp.int32))
  assert np.isfinite(float(loss))
