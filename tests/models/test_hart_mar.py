"""HART's last scale (model 'hart'): MAR-style masking in training, MaskGIT iterations in
sampling, and the filtered training draw of q_K, on test_hart's tiny layout (scales 1,2,3,4;
the last scale has 16 cells):

- the revealed counts per iteration equal HART's loop (autoregressive_infer_cfg) simulated in
  numpy with mask arrays, and every row of the model's reveal steps has those counts;
- num_maskgit_iters=1 is the one-pass sampler (the mask path with all cells at iteration 0
  gives the same hidden states as the plain decode mask, 1e-6);
- num_maskgit_iters=4 (greedy, no CFG) equals a literal HART loop written here: the scales
  before K through the KV cache, then per iteration only that iteration's cells fed, their
  keys appended to the cache, attending to everything cached (1e-4 on f_hat);
- the masked fraction per batch follows the truncated normal N(1, 0.25) on [0.5, 1] (exact
  probabilities of ceil(16 r) from scipy's truncnorm, 3000 draws, |freq - p| <= 4 sigma + 0.005);
- the masked training CE equals the CE of a dropped sequence (masked cells removed, as HART's
  x_BLC[mask]) over the earlier scales and the kept cells (1e-5);
- mask_last_scale=False trains every token (the VAR-like causal loss);
- the q_K draw's top-k / top-p filter equals a float64 numpy port of HART's
  sample_with_top_k_top_p_ (V = 4096, k = 600, p = 0.96, and k = 5, p = 0.5), and the draw only
  takes surviving tokens with their renormalised frequencies (4000 draws, 4 sigma + 0.005);
- bad input: the masking or MaskGIT iterations with a Markovian scale mask, and out-of-range
  fields, are refused by name.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from arjax.core.functional import abstract_module
from arjax.heads.categorical import process_logits
from arjax.kernels.masks import MaskSpec
from arjax.models import build_model
from arjax.models.hart import maskgit_counts
from arjax.sampling import SamplingConfig, build_sampler
from arjax.sampling.next_scale import MASKGIT_KEY
from arjax.tokenizers import build_tokenizer
from tests.models.test_hart import build, hart_config, tok  # noqa: F401 (fixture)

MAR = ["model.num_maskgit_iters=4", "model.mask_keep_min=2", "model.class_dropout=0.0",
       "model.drop_path=0.0"]
N, A = 30, 14  # tokens, start of the last scale (16 cells)


@pytest.fixture(scope="module")
def mar(tok):  # noqa: F811
  return build(hart_config(*MAR), tok)


def hart_loop_counts(n, iters, rng):
  """HART's MaskGIT loop in numpy: mask arrays over a random order; returns (counts, the
  iteration of every cell)."""
  order = rng.permutation(n)
  mask = np.ones(n, bool)
  step_of = np.full(n, -1)
  counts = []
  for step in range(iters):
    ratio = np.cos(math.pi / 2.0 * (step + 1) / iters)
    mask_len = np.floor(n * ratio)
    mask_len = max(1.0, min(mask.sum() - 1.0, mask_len))
    nxt = np.zeros(n, bool)
    nxt[order[:int(mask_len)]] = True
    pred = mask if step >= iters - 1 else mask ^ nxt
    step_of[pred] = step
    counts.append(int(pred.sum()))
    mask = nxt
  return tuple(counts), step_of, order


def test_maskgit_counts_are_harts(mar):
  rng = np.random.default_rng(0)
  for n, iters in [(16, 1), (16, 2), (16, 4), (16, 8), (16, 20), (49, 3), (4096, 8), (4096, 64)]:
    want, step_of, order = hart_loop_counts(n, iters, rng)
    assert maskgit_counts(n, iters) == want, (n, iters)
    assert sum(want) == n
    assert (step_of[order[::-1]] == np.sort(step_of)).all()  # the order's last cells come first
  fm, params = mar
  model = fm.bind(params)
  assert model.maskgit_counts() == hart_loop_counts(16, 4, rng)[0]
  steps = np.asarray(model.last_scale_reveal_steps(jax.random.key(1), 8))
  for row in steps:
    assert tuple(np.bincount(row, minlength=4)) == model.maskgit_counts()
  assert len({tuple(r) for r in steps}) > 1  # a random order per row


def test_iters_one_is_the_one_pass_mask(mar, tok):  # noqa: F811
  fm, params = mar
  labels = jnp.array([2, 6])
  tokens = jax.random.randint(jax.random.key(0), (2, N), 0, 32)

  def last_hidden(p, steps):
    model = fm.bind(p)
    inputs = model.next_scale_inputs(tokens)
    caches = model.init_cache(2)
    for k, (a, e) in enumerate(model.order.bounds[:-1]):
      _, caches = model.decode_scale(k, None if k == 0 else inputs[:, a - 1:e - 1], labels,
                                     caches)
    extra = {} if steps is None else {"reveal_steps": steps}
    return model.decode_scale_hidden(3, inputs[:, A - 1:], labels, caches, **extra)[2]

  run = jax.jit(last_hidden)
  plain = np.asarray(run(params, None))
  np.testing.assert_allclose(np.asarray(run(params, jnp.zeros((2, 16), jnp.int32))), plain,
                             rtol=1e-6, atol=1e-6)
  steps = fm.bind(params).last_scale_reveal_steps(jax.random.key(5), 2)
  assert float(np.abs(np.asarray(run(params, steps)) - plain).max()) > 1e-3  # the mask bites
  fm1, _ = build(hart_config(*MAR[1:]), tok)
  assert fm1.bind(params).last_scale_reveal_steps(jax.random.key(0), 2) is None


def test_maskgit_sampler_equals_harts_loop(mar):
  fm, params = mar
  labels = np.array([2, 6])
  rng = jax.random.key(3)
  sampler = build_sampler(fm, SamplingConfig(cfg_scale=1.0, top_k=1))
  tokens, f_all = sampler.sample_with_fhat(params, labels, rng)
  counts = fm.bind(params).maskgit_counts()

  @jax.jit
  def hart_loop(p, t):
    """The literal loop: scales < K cached, then per iteration its cells only, appended."""
    model = fm.bind(p)
    y = jnp.asarray(labels)
    steps = model.last_scale_reveal_steps(jax.random.fold_in(rng, MASKGIT_KEY), 2)
    inputs = model.next_scale_inputs(t)
    caches = model.init_cache(2)
    for k, (a, e) in enumerate(model.order.bounds[:-1]):
      _, caches = model.decode_scale(k, None if k == 0 else inputs[:, a - 1:e - 1], y, caches)
    cond = model.cond(y)
    x_last = (model.word_embed(inputs[:, A - 1:]) + model.level_embed[...][3]
              + model.pos_embed[...][A:][None])                                  # [2, 16, C]
    by_step = jnp.argsort(steps, axis=1, stable=True)  # cells in iteration order
    hidden = jnp.zeros_like(x_last)
    last = jnp.zeros((2, 16), jnp.int32)
    done = 0
    for c in counts:
      cells = by_step[:, done:done + c]
      x = jnp.take_along_axis(x_last, cells[..., None], 1)
      mask = MaskSpec(kind="bidirectional", kv_length=jnp.full((1,), A + done + c, jnp.int32))
      new = []
      for blk, cache in zip(model.blocks, caches):
        x, cache = blk(x, cond, mask, cache=cache, index=A + done)
        new.append(cache)
      caches = new
      drawn = jnp.argmax(model.head(x, cond).logits, -1).astype(jnp.int32)
      rows = jnp.arange(2)[:, None]
      hidden = hidden.at[rows, cells].set(x)
      last = last.at[rows, cells].set(drawn)
      done += c
    t = t.at[:, A:].set(last)
    r = model.residual_dist(hidden, last).sample(jax.random.fold_in(rng, 2_000_000))
    f_hat = model.scale_quantizer().partial_reconstructions(t)[-1]
    return t, f_hat + r.reshape(2, 4, 4, 8)

  t0 = jnp.asarray(tokens).at[:, A:].set(0)  # the scales before K as the sampler drew them
  want_tokens, want_f = hart_loop(params, t0)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(want_tokens))
  np.testing.assert_allclose(np.asarray(f_all), np.asarray(want_f), rtol=1e-4, atol=1e-4)


def test_masked_fraction_is_harts_truncated_normal(mar):
  fm, params = mar
  model = fm.bind(params)
  keys = jax.random.split(jax.random.key(11), 3000)
  keep = np.asarray(jax.jit(jax.vmap(lambda k: model.last_scale_keep(k, 2)))(keys))
  masked = (~keep).sum(-1)                                                    # [3000, 2]
  assert (masked[:, 0] == masked[:, 1]).all()  # one fraction per batch
  assert not (keep[:, 0] == keep[:, 1]).all()  # a random order per row
  # P(ceil(16 r) = m), r ~ N(1, 0.25) truncated to [0.5, 1]; m <= 16 - mask_keep_min = 14.
  r = scipy.stats.truncnorm(-2.0, 0.0, loc=1.0, scale=0.25)
  p = np.array([r.cdf(m / 16) - r.cdf((m - 1) / 16) for m in range(17)])
  p[14] += p[15:].sum()
  p[15:] = 0
  freq = np.bincount(masked[:, 0], minlength=17) / len(keys)
  tol = 4 * np.sqrt(p * (1 - p) / len(keys)) + 0.005
  assert (np.abs(freq - p) <= tol).all(), (freq, p)


def dropped_ce(fm, p, tokens, labels, keep):
  """HART's x_BLC[mask]: the masked cells removed from the sequence (block-causal by scale over
  what is left); mean CE over the earlier scales and the kept cells."""
  model = fm.bind(p)
  x, cond = model.embed(model.next_scale_inputs(tokens), labels)
  keep = np.asarray(keep)
  kept = jnp.asarray(np.argsort(~keep, axis=1, kind="stable")[:, :keep[0].sum()] + A)  # [2, M]
  idx = jnp.concatenate([jnp.broadcast_to(jnp.arange(A), (2, A)), kept], 1)
  x = jnp.take_along_axis(x, idx[..., None], 1)
  ids = jnp.take(model.order.level_ids, idx)
  mask = MaskSpec(kind="block_causal", q_block_ids=ids, kv_block_ids=ids)
  for blk in model.blocks:
    x, _ = blk(x, cond, mask)
  logits = model.head(x, cond).logits
  tgt = jnp.take_along_axis(tokens, idx, 1)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tgt[..., None], -1)[..., 0]
  return -logp.mean()


def test_masked_training_ce_is_the_dropped_sequence(mar, tok):  # noqa: F811
  fm, params = mar
  rng = np.random.default_rng(6)
  batch = {"tokens": jnp.asarray(rng.integers(0, 32, (2, N)), jnp.int32),
           "residual": jnp.asarray(0.1 * rng.standard_normal((2, 16, 8)), jnp.float32),
           "label": jnp.array([1, 2])}
  keep = np.ones((2, 16), bool)
  keep[0, [0, 3, 4, 9, 10, 15]] = False
  keep[1, [1, 2, 5, 6, 12, 13]] = False
  keep = jnp.asarray(keep)

  def train_loss(p, model_fm, keep_fixed):
    model = model_fm.bind(p, rng=jax.random.key(0))
    if keep_fixed is not None:  # the draw replaced by a fixed mask
      object.__setattr__(model, "last_scale_keep", lambda key, b: keep_fixed)
    return model.loss(batch, train=True)[1]

  m, want = jax.jit(lambda p: (train_loss(p, fm, keep)["ce_loss"], dropped_ce(
      fm, p, batch["tokens"], batch["label"], keep)))(params)
  np.testing.assert_allclose(float(m), float(want), rtol=1e-5)
  # mask_last_scale=False: VAR's causal loss over every token (train == eval CE).
  fm0, _ = build(hart_config(*MAR, "model.mask_last_scale=False"), tok)
  m0, e0 = jax.jit(lambda p: (train_loss(p, fm0, None)["ce_loss"],
                              fm0.bind(p).loss(batch, train=False)[1]["ce_loss"]))(params)
  np.testing.assert_allclose(float(m0), float(e0), rtol=1e-6)
  assert abs(float(m0) - float(want)) > 1e-4


def harts_filter(logits, top_k, top_p):
  """float64 numpy port of HART's sample_with_top_k_top_p_ filter: bool [..., V] survivors."""
  x = np.asarray(logits, np.float64).copy()
  if top_k > 0:
    kth = np.sort(x, -1)[..., -top_k][..., None]
    x[x < kth] = -np.inf
  if top_p > 0:
    order = np.argsort(x, -1)                                          # ascending
    s = np.take_along_axis(x, order, -1)
    e = np.exp(s - s.max(-1, keepdims=True))
    remove = np.cumsum(e / e.sum(-1, keepdims=True), -1) <= 1 - top_p
    remove[..., -1] = False
    np.put_along_axis(remove, order, remove.copy(), -1)
    x[remove] = -np.inf
  return np.isfinite(x)


def test_condition_filter_is_harts(tok):  # noqa: F811
  rng = np.random.default_rng(8)
  for v, k, p in [(4096, 600, 0.96), (32, 5, 0.5), (32, 0, 0.8), (32, 7, 1.0)]:
    logits = (3.0 * rng.standard_normal((64, v))).astype(np.float32)
    got = np.asarray(process_logits(jnp.asarray(logits), top_k=k, top_p=p)) > np.finfo(
        np.float32).min
    want = harts_filter(logits, k, 0.0 if p >= 1 else p)
    np.testing.assert_array_equal(got, want, err_msg=f"V={v} k={k} p={p}")
  # The model's draw: fields read from the config, only survivors, renormalised frequencies.
  config = hart_config(*MAR, "model.condition_top_k=5", "model.condition_top_p=0.5")
  model = abstract_module(
      lambda: build_model(config, tokenizer=build_tokenizer(config).with_decoder(tok)))
  assert (model.condition_top_k, model.condition_top_p) == (5, 0.5)
  default = abstract_module(lambda: build_model(
      hart_config(), tokenizer=build_tokenizer(hart_config()).with_decoder(tok)))
  assert (default.condition_top_k, default.condition_top_p) == (600, 0.96)
  logits = (1.5 * rng.standard_normal(32)).astype(np.float32)
  draws = np.asarray(model.draw_condition(jax.random.key(2),
                                          jnp.broadcast_to(jnp.asarray(logits), (4000, 32))))
  keep = harts_filter(logits, 5, 0.5)
  assert keep.sum() >= 2 and set(np.unique(draws)) <= set(np.flatnonzero(keep))
  pk = np.where(keep, np.exp(logits - logits.max()), 0.0)
  pk /= pk.sum()
  freq = np.bincount(draws, minlength=32) / 4000
  assert (np.abs(freq - pk) <= 4 * np.sqrt(pk * (1 - pk) / 4000) + 0.005).all(), (freq, pk)


def test_bad_input_named(tok):  # noqa: F811
  def make(*extra):
    config = hart_config(*extra)
    return abstract_module(
        lambda: build_model(config, tokenizer=build_tokenizer(config).with_decoder(tok)))
  with pytest.raises(ValueError, match=r"model.mask_last_scale / model.num_maskgit_iters > 1 "
                                       r"need the block-causal scale mask; order.markovian=True"):
    make("order.markovian=True")
  make("order.markovian=True", "model.mask_last_scale=False")  # VAR-like training: allowed
  for field, value in [("condition_top_p", "0.0"), ("num_maskgit_iters", "0"),
                       ("mask_ratio_min", "1.0")]:
    with pytest.raises(ValueError, match=rf"model.{field}"):
      make(f"model.{field}={value}")
