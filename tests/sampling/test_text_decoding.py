"""Issue 17's decoding / distillation details: LRD's top-p mixture (float64 numpy reference) and
its two phases (a numpy loop), Fast-dLLM v2's DualCache (exact where it must be, the
approximation visible where it is one), complementary masking (exact cover, unbiased NELBO),
token shift (b = 1 is the AR pass), SDTT's kl-fwd / kl-bwd (float64 reference), bad options."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from arjax.core.functional import FunctionalModel
from arjax.models import sdtt
from arjax.models.diffusion_lm import DiffusionLM, DiffusionLMFields, nelbo_exact
from arjax.nn.transformer import TransformerConfig
from arjax.sampling import SAMPLERS, SamplingConfig
from arjax.sampling.diffusion_lm import DecodeOptions, _soft_forward, lrd_mixture

V, L = 5, 8


def backbone(layers):
  return TransformerConfig(num_layers=layers, num_heads=2, dim=32, mlp_dim=64, position="rope1d")


def make(objective, block_size=4, layers=2, scale=20.0, seq_len=L, vocab=V, **kw):
  fields = DiffusionLMFields(objective=objective, vocab_size=vocab, seq_len=seq_len,
                             block_size=block_size, **kw)
  fm = FunctionalModel(DiffusionLM(fields, backbone(layers), rngs=nnx.Rngs(0)))
  p = fm.initial_params()
  p["head"]["proj"]["kernel"] = p["head"]["proj"]["kernel"] * scale  # context-dependent
  return fm, p


def run(name, fm, params, batch=3, temperature=1.0, seed=0, **opts):
  s = SAMPLERS.get(name)(fm, SamplingConfig(temperature=temperature, name=name),
                         decode=DecodeOptions(**opts))
  tokens, nfe = s.sample(params, jax.random.key(seed), batch)
  return np.asarray(tokens), int(nfe)


# -- LRD ----------------------------------------------------------------------------------------
def mixture_ref(p, table, mask_emb, top_p):
  """float64: (1 - a) e_mask + a sum_{v in nucleus} q(v) e_v, a = 1 - H(p) / log V."""
  p = np.asarray(p, np.float64)
  out = np.zeros(p.shape[:-1] + (table.shape[1],))
  for idx in np.ndindex(p.shape[:-1]):
    row = p[idx]
    order = np.argsort(-row)
    keep, mass = [], 0.0
    for v in order:            # the fewest most probable symbols whose mass reaches top_p
      keep.append(v)
      mass += row[v]
      if mass >= top_p:
        break
    q = np.zeros_like(row)
    q[keep] = row[keep] / row[keep].sum()
    a = 1.0 - (-(row * np.log(row)).sum() / math.log(len(row)))
    out[idx] = (1 - a) * mask_emb + a * (q @ table)
  return out


@pytest.mark.parametrize("top_p", [1.0, 0.8, 0.5, 0.05])
def test_lrd_mixture_against_numpy(top_p):
  rng = np.random.default_rng(0)
  p = rng.dirichlet(np.full(V, 0.7), size=(2, 3)).astype(np.float32)
  table = rng.normal(size=(V, 4)).astype(np.float32)
  mask_emb = rng.normal(size=4).astype(np.float32)
  got = np.asarray(lrd_mixture(jnp.asarray(p), jnp.asarray(table), jnp.asarray(mask_emb), top_p))
  np.testing.assert_allclose(got, mixture_ref(p, table.astype(np.float64), mask_emb, top_p),
                             rtol=1e-5, atol=1e-6)
  if top_p == 1.0:  # today's mixture: the whole prediction, no renormalisation.
    a = 1.0 - (-(p * np.log(p)).sum(-1) / math.log(V))
    today = (1 - a[..., None]) * mask_emb + a[..., None] * (p @ table)
    np.testing.assert_allclose(got, today, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def mdlm():
  return make("mdlm", block_size=L)


def lrd_two_phase_ref(fm, params, batch, steps, max_rounds, kl_stop, kl_decode, threshold):
  """Greedy LRD in numpy (the network pass is the model's; mixtures, KLs and commits here)."""
  model = fm.bind(params)
  fwd = jax.jit(lambda e: _soft_forward(model, e))
  table = np.asarray(model.embed.embedding[...], np.float64)
  mask = model.mask_id

  def soft_logp(logits):
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))

  def embed(tokens, logp):
    mix = mixture_ref(np.exp(logp), table[:V], table[mask], 1.0)
    return np.where((tokens == mask)[..., None], mix, table[tokens])

  def kl(lp, lq):
    return (np.exp(lp) * (lp - lq)).sum(-1)

  tokens = np.full((batch, L), mask, np.int32)
  lp = soft_logp(fwd(jnp.asarray(table[tokens], jnp.float32)))
  nfe = 1
  k = math.inf
  while nfe < max_rounds and k > kl_stop:          # phase 1: refine every position
    lq = soft_logp(fwd(jnp.asarray(embed(tokens, lp), jnp.float32)))
    k = kl(lp, lq).mean()
    lp, nfe = lq, nfe + 1
  k_min = math.ceil(L / steps)
  while (tokens == mask).any():                    # phase 2: commit, keep the rest soft
    open_ = tokens == mask
    lq = soft_logp(fwd(jnp.asarray(embed(tokens, lp), jnp.float32)))
    row_kl = np.where(open_, kl(lp, lq), 0.0).sum(-1) / np.maximum(open_.sum(-1), 1)
    draw, conf = lq.argmax(-1), np.exp(lq.max(-1))
    for r in range(batch):
      cand = [i for i in range(L) if open_[r, i]]
      if row_kl[r] < kl_decode:
        pick = cand
      else:
        top = sorted(cand, key=lambda i: -conf[r, i])[:k_min]
        pick = set(top) | {i for i in cand if conf[r, i] > threshold}
      for i in pick:
        tokens[r, i] = draw[r, i]
    lp, nfe = lq, nfe + 1
  return tokens, nfe


@pytest.mark.parametrize("kl_decode,threshold", [(0.0, 1.0), (0.0, 0.5), (1e9, 1.0)])
def test_lrd_phase_switch_against_numpy_loop(mdlm, kl_decode, threshold):
  """Phase 1 refines 3 passes (KL stop 0), then phase 2: threshold 1.0 with kl_decode 0 commits
  exactly k = L / steps = 2 tokens per pass (4 passes); kl_decode huge stops at the first
  phase-2 pass (every row commits everything)."""
  fm, params = mdlm
  opts = dict(steps=4, lrd=True, lrd_phase_switch=True, lrd_max_rounds=3, lrd_kl_stop=0.0,
              lrd_kl_decode=kl_decode, threshold=threshold)
  tok, nfe = run("mdlm", fm, params, batch=2, temperature=0.0, **opts)
  ref, nfe_ref = lrd_two_phase_ref(fm, params, 2, 4, 3, 0.0, kl_decode, threshold)
  np.testing.assert_array_equal(tok, ref)
  assert nfe == nfe_ref
  assert (tok < V).all()
  if threshold == 1.0:
    assert nfe == 3 + (4 if kl_decode == 0.0 else 1)


# -- Fast-dLLM v2 DualCache ---------------------------------------------------------------------
def sub_block_pass_vs_recompute(layers):
  """After a whole-block pass over an all-[MASK] block 1 (the block cache), reveal one token of
  its second sub-block and run only that sub-block over the block cache: max |logits - the
  logits of a block-causal recomputation of the whole sequence|."""
  fm, params = make("bd3lm", block_size=4, layers=layers)

  @jax.jit
  def diff(params):
    m = fm.bind(params)
    x = jnp.array([[0, 1, 2, 3], [3, 3, 1, 0]], jnp.int32)
    caches = m.decode_block(x, 0, m.init_cache(2), 4)[1]
    blk = jnp.full((2, 4), V, jnp.int32)
    block_cache = m.decode_block(blk, 4, caches, 4)[1]
    blk = blk.at[:, 2].set(jnp.array([1, 2]))
    narrow = m.decode_block(blk[:, 2:], 6, block_cache, 4)[0]
    full = m.recompute_logits(jnp.concatenate([x, blk], 1), 4)[:, 6:]
    return jnp.abs(narrow - full).max()
  return float(diff(params))


def test_dual_cache_sub_block_pass():
  # One layer: the other positions' K/V depend only on their own (unchanged) tokens: exact.
  assert sub_block_pass_vs_recompute(1) < 1e-5
  # Two layers: they depended on the sub-block's earlier state (Fast-dLLM's approximation).
  assert sub_block_pass_vs_recompute(2) > 1e-3


@pytest.fixture(scope="module")
def one_layer():
  return make("bd3lm", block_size=8, layers=1)


@pytest.mark.parametrize("batch,threshold", [(1, 0.6), (3, 1.0)])
def test_dual_cache_equals_recomputation_one_layer(one_layer, batch, threshold):
  """Same key, temperature 1: the DualCache gives the tokens of full recomputation (and of the
  per-block cache) with the same number of passes. Batch 3 with threshold 1.0: every row takes
  one token per round, so lockstep and per-row sub-blocks coincide."""
  fm, params = one_layer
  opts = dict(threshold=threshold, sub_block=4)
  dual, nfe_d = run("fast_dllm", fm, params, batch=batch, dual_cache=True, **opts)
  rec, nfe_r = run("fast_dllm", fm, params, batch=batch, cache=False, **opts)
  cached, _ = run("fast_dllm", fm, params, batch=batch, **opts)
  np.testing.assert_array_equal(dual, rec)
  np.testing.assert_array_equal(dual, cached)
  assert nfe_d == nfe_r + 1      # + the K/V write of the finished block (1 block of 8)
  if threshold == 1.0:
    assert nfe_d == L + 1        # one token per pass: one-token-at-a-time


def test_dual_cache_whole_sub_block_is_the_block_cache():
  """sub_block = b: every round runs the whole block (no sub-block pass), so the DualCache
  path equals the per-block cache for any depth (two layers here)."""
  fm, params = make("bd3lm", block_size=4, layers=2)
  dual, nfe_d = run("fast_dllm", fm, params, batch=1, dual_cache=True, threshold=0.6)
  cached, nfe_c = run("fast_dllm", fm, params, batch=1, threshold=0.6)
  np.testing.assert_array_equal(dual, cached)
  assert nfe_d == nfe_c


# -- complementary masking and token shift ------------------------------------------------------
def test_complementary_masks_cover_every_position_once():
  fm, params = make("bd3lm", block_size=4, complementary=True)

  @jax.jit
  def parts(params, x):
    model = fm.bind(params)
    t = model.draw_t(jax.random.key(1), 6, 0.0, 1.0)
    pair = model.corrupt_pair(jax.random.key(2), x, t)
    per = model.nelbo_terms(x, jax.random.key(3))
    kt, km = jax.random.split(jax.random.key(3))
    (a, ma, ta), (c, mc, tc) = model.corrupt_pair(km, x, model.draw_t(kt, 6, 0.0, 1.0))
    want = 0.5 * (model.weighted_nll(x, a, ma, ta) + model.weighted_nll(x, c, mc, tc))
    return pair, per, want

  x = jax.random.randint(jax.random.key(0), (6, L), 0, V)
  ((xt, m, tt), (xc, mc, tc)), per, want = parts(params, x)
  m, mc = np.asarray(m), np.asarray(mc)
  np.testing.assert_array_equal(m.astype(int) + mc.astype(int), np.ones((6, L), int))
  np.testing.assert_array_equal(np.asarray(xt) == V, m)
  np.testing.assert_array_equal(np.asarray(xc) == V, mc)
  np.testing.assert_array_equal(np.asarray(xc)[~mc], np.asarray(x)[~mc])
  np.testing.assert_allclose(np.asarray(tc), 1.0 - np.asarray(tt), atol=1e-7)
  # The loss is the mean of the two copies' weighted NLLs (one pass over both copies).
  np.testing.assert_allclose(np.asarray(per), np.asarray(want), rtol=1e-5)


def test_complementary_nelbo_is_unbiased():
  """Toy model (V = 3, L = 4, b = 2, head x150): the complementary estimator's mean over 2000
  draws is within 4 standard errors of the exact NELBO for 4 sequences (seed 0)."""
  v, n = 3, 4
  fm, params = make("bd3lm", block_size=2, scale=150.0, seq_len=n, vocab=v, complementary=True)
  model = fm.bind(params)
  seqs = np.array(list(itertools.product(range(v), repeat=n)), np.int32)[[0, 11, 40, 66]]
  exact = nelbo_exact(jax.jit(lambda xt, x0: model.denoise_logits(xt, x0)), seqs, 2, v)
  reps = 2000
  x = jnp.asarray(np.repeat(seqs, reps, 0))
  est = np.asarray(jax.jit(lambda x, k: model.nelbo_terms(x, k))(x, jax.random.key(0)),
                   np.float64).reshape(len(seqs), reps)
  mean, se = est.mean(1), est.std(1) / math.sqrt(reps)
  assert np.all(np.abs(mean - exact) < 4 * se + 1e-4), (mean, exact, se)


@pytest.fixture(scope="module")
def shift_b1():
  return make("bd3lm", block_size=1, token_shift=True)


def test_token_shift_block_one_is_the_ar_pass(shift_b1):
  """b = 1: every x_i reads the clean output at x_{i-1} (x_0: [BOS]'s), which sees [BOS] and
  x_<i at positions 0..i: the 'ar' objective's pass on the same parameters. So the shifted
  logits equal `ar_logits` for any x_t (rtol 1e-5) and the t = 1 loss is the AR NLL."""
  fm, params = shift_b1

  @jax.jit
  def parts(params, x):
    model = fm.bind(params)
    half = jnp.where(jax.random.uniform(jax.random.key(1), x.shape) < .5, V, x)
    shifted = [model.bd3_shift_logits(xt, x, 1) for xt in (jnp.full_like(x, V), half)]
    return model.ar_logits(x), shifted, model.nelbo_terms(x, jax.random.key(2), 1.0, 1.0)

  x = jax.random.randint(jax.random.key(0), (3, L), 0, V)
  ar, shifted, loss = parts(params, x)
  for got in shifted:
    np.testing.assert_allclose(np.asarray(got), np.asarray(ar), rtol=1e-5, atol=1e-5)
  ar_nll = optax.softmax_cross_entropy_with_integer_labels(ar, x).sum(-1)
  np.testing.assert_allclose(np.asarray(loss), np.asarray(ar_nll), rtol=1e-5)


def test_token_shift_sees_only_what_a_decoder_has():
  """b = 4: the prediction of x_i must not change when tokens it may not see change: clean
  tokens of its own block and later ones, noisy tokens of other blocks."""
  fm, params = make("bd3lm", block_size=4, token_shift=True)
  model = fm.bind(params)
  f = jax.jit(lambda xt, x0: model.bd3_shift_logits(xt, x0, 4))
  x = jax.random.randint(jax.random.key(0), (1, L), 0, V)
  xt = jnp.where(jax.random.uniform(jax.random.key(1), x.shape) < .5, V, x)
  base = np.asarray(f(xt, x))
  for i in range(L):
    blk = i // 4
    x2 = x.at[:, blk * 4:].set((x[:, blk * 4:] + 1) % V)          # own and later clean
    other = [j for j in range(L) if j // 4 != blk]
    xt2 = xt.at[:, other].set(jnp.where(xt[:, other] == V, x[:, other], V))  # other noisy
    got = np.asarray(f(xt2, x2))
    np.testing.assert_allclose(got[:, i], base[:, i], rtol=1e-5, atol=1e-5)
  # and it does depend on the earlier clean block (block 1 reads block 0).
  assert np.abs(np.asarray(f(xt, x.at[:, :4].set((x[:, :4] + 1) % V)))[:, 4:]
                - base[:, 4:]).max() > 1e-3


def test_token_shift_block_one_decodes_like_text_ar(shift_b1):
  """b = 1 token-shift decoding (sdar, one round per block, recomputed) is greedy AR decoding:
  it equals the KV-cached `text_ar` sampler on an 'ar' model with the same parameters."""
  fm, params = shift_b1
  tok, nfe = run("sdar", fm, params, temperature=0.0, steps=1, cache=False)
  ar_fm, _ = make("ar")
  ref, _ = run("text_ar", ar_fm, params, temperature=0.0)
  np.testing.assert_array_equal(tok, ref)
  assert nfe == L


def test_token_shift_threshold_one_is_one_token_at_a_time():
  """b = 4, threshold 1.0: one token per pass, the most confident of the block, with logits
  from the training pass (`bd3_shift_logits`) in a numpy loop."""
  fm, params = make("bd3lm", block_size=4, token_shift=True)
  tok, nfe = run("fast_dllm", fm, params, batch=2, temperature=0.0, threshold=1.0, cache=False)
  f = jax.jit(lambda x: fm.bind(params).bd3_shift_logits(x, x, 4))
  ref = np.full((2, L), V, np.int32)
  for start in range(0, L, 4):
    for _ in range(4):
      logits = np.asarray(f(jnp.asarray(ref)), np.float64)
      p = np.exp(logits - logits.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      for r in range(2):
        i = max((i for i in range(start, start + 4) if ref[r, i] == V),
                key=lambda i: p[r, i].max())
        ref[r, i] = int(p[r, i].argmax())
  np.testing.assert_array_equal(tok, ref)
  assert nfe == L


# -- SDTT ---------------------------------------------------------------------------------------
def test_sdtt_divergences_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, V)).astype(np.float32) * 2
  tgt = rng.dirichlet(np.ones(V), size=3)
  tgt[2] = np.eye(V)[1]                       # a revealed token's one-hot target
  lq = logits.astype(np.float64) - logits.max(-1, keepdims=True)
  lq = lq - np.log(np.exp(lq).sum(-1, keepdims=True))
  lp = np.log(np.maximum(tgt, 1e-20))
  fwd = (tgt * (lp - lq)).sum(-1)
  bwd = (np.exp(lq) * (lq - lp)).sum(-1)
  t32 = jnp.asarray(tgt, jnp.float32)
  np.testing.assert_allclose(np.asarray(sdtt.divergence(t32, jnp.asarray(logits), "kl-fwd")),
                             fwd, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(sdtt.divergence(t32, jnp.asarray(logits), "kl-bwd")),
                             bwd, rtol=1e-5, atol=1e-5)
  assert bwd[2] > 10 and fwd[2] < 5           # kl-bwd is mode-seeking on a one-hot target
  with pytest.raises(ValueError, match="divergence='kl'"):
    sdtt.divergence(t32, jnp.asarray(logits), "kl")


def test_sdtt_loss_is_zero_for_the_teacher_on_its_own_targets(mdlm):
  """dt -> 0 reveals nothing, so the target is the teacher's prediction at x_t: a student
  equal to the teacher has divergence 0 in both directions."""
  fm, params = mdlm

  @jax.jit
  def losses(params, x):
    model = fm.bind(params)
    xt, masked, tgt = sdtt.sdtt_targets(model, x, jax.random.key(1), 0.0)
    return masked.sum(), [sdtt.sdtt_loss(model, xt, masked, tgt, k) for k in sdtt.DIVERGENCES]

  n_masked, out = losses(params, jax.random.randint(jax.random.key(0), (4, L), 0, V))
  assert int(n_masked) > 0
  for value in out:
    assert abs(float(value)) < 1e-5


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("opts,field", [
    (dict(lrd=True, lrd_top_p=0.0), "sampling.lrd_top_p"),
    (dict(lrd=True, lrd_top_p=1.5), "sampling.lrd_top_p"),
    (dict(lrd=True, lrd_kl_decode=-1.0), "sampling.lrd_kl_decode"),
    (dict(lrd_phase_switch=True), "sampling.lrd_phase_switch"),
    (dict(dual_cache=True, cache=False), "sampling.dual_cache")])
def test_bad_decode_options_name_the_field(opts, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    DecodeOptions(**opts).validate(L, 4)


def test_bad_model_and_sampler_options_name_the_field():
  with pytest.raises(ValueError, match=r"model\.token_shift"):
    DiffusionLMFields(objective="mdlm", token_shift=True)
  with pytest.raises(ValueError, match=r"model\.complementary"):
    DiffusionLMFields(objective="ar", complementary=True)
  fm, _ = make("bd3lm", block_size=4)
  with pytest.raises(ValueError, match=r"sampling\.dual_cache"):
    SAMPLERS.get("sdar")(fm, SamplingConfig(name="sdar"), decode=DecodeOptions(dual_cache=True))
  fm, _ = make("bd3lm", block_size=4, token_shift=True)
  with pytest.raises(ValueError, match=r"sampling\.cache=True"):
    SAMPLERS.get("sdar")(fm, SamplingConfig(name="sdar"))
