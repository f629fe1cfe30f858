"""Speculative Jacobi decoding: 'sjd', 'mc_sjd' (lossless) and 'gsd' (lossy), KV-cached.

Every row of the batch keeps a committed prefix x_0 ... x_{n-1} and draft tokens for the cells
after it (drawn at random first: uniform, q = 1/V). One pass of the model feeds W tokens per row,
the last committed one and the next W - 1 drafts, and returns the target distributions
p_n ... p_{n+W-1} (after guidance, temperature, top-k / top-p, as the sequential sampler draws).
p_n conditions on the committed prefix only; p_{n+j} also on drafts n ... n+j-1. The drafts are
then verified left to right (Teng et al. 2024, SJD; methods.md section 10):

  accept draft x_k (drawn from q_k) if u < min(1, p_k(x_k) / q_k(x_k));
  at the first rejection draw x_k from norm(max(0, p_k - q_k)) and stop.

Accepted drafts and the corrected token are committed (at least one token per pass, the whole
window when every draft is accepted); the cells after the rejection get new drafts with
q_k = p_k of this pass. Because a draft is, given everything left of it, distributed as the q it
is tested against, every committed token is an exact draw from p(. | committed prefix): SJD is
lossless (tests/sampling/test_speculative.py checks the joint law with a chi-square test).

  sjd     new drafts are fresh draws from p_k.
  mc_sjd  new drafts are maximally coupled to the old ones (MC-SJD, So et al. 2025): keep the
          old draft x with probability min(1, p_k(x) / q_k(x)), else draw from the residual
          norm(max(0, p_k - q_k)). Marginally a draw from p_k (lossless), but unchanged with
          probability 1 - TV(p_k, q_k), so the contexts of later cells stop changing and
          acceptance rises.
  gsd     grouped acceptance (So et al. 2025, GSD): accept x_k with probability
          min(1, p_k(G) / q_k(G)) over the group G of x_k: tokens within `gsd_radius` ranks of
          x_k in p_k's order whose p_k differs from p_k(x_k) by less than `gsd_tol` (the
          official code's +-7 ranks and 0.15; its extra filter on token-embedding distance is
          not used). Lossy by design: the committed law is not p.

Rollback is by cache length: each row's next pass starts at its own committed length
(`decode_tokens` with an int32 [B] token index, so rows accept different numbers of tokens);
stale keys of rejected drafts past a query are hidden by the causal mask and overwritten by
the next pass. Near the end of the sequence the window is moved back to end at cell N - 1, so
the cache never grows. Randomness is per row (a key per row; pass t uses fold_in(key_row, t)),
so a row gives the same tokens in any batch (`sample_tokens` takes one key, split per row, or a
key per row).

Options: `window`, `gsd_radius`, `gsd_tol` are fields of config.sampling / SamplingConfig
(`python -m arjax.sample --sampler sjd --window 8`; window 0, the default: min(16, N - 1)), or
given in code as `options=SpeculativeOptions(...)`; out-of-range values name the field.

Models: those of the 'sequential' sampler (decode_prefix / decode_tokens with per-row token
indexes: raster_ar, ordered_ar with a raster-like causal order) with a categorical head. An
order with bidirectional or block masks is refused by name.

The loop is generic over the law of a cell (`target_law`, `initial_law`, `initial_drafts`,
`draw_one`, `verify_row`): categorical probabilities [V] here, the GMM head's mixture for
'continuous_sjd' (arjax.sampling.continuous_speculative). Stats per row also count the tokens
committed from a residual draw and, for continuous_sjd, the residual draws that fell back at
its try bound.

Legend: B batch, N tokens per image, V vocabulary, W window (tokens fed per pass).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from arjax.core.functional import FunctionalModel
from arjax.heads.base import split_halves
from arjax.heads.categorical import process_logits
from arjax.sampling.base import SAMPLERS, Sampler
from arjax.sampling.config import SamplingConfig
from arjax.sampling.decode import raster_like
from arjax.sampling.guidance_schedule import GuidanceSchedule

__all__ = ["SpeculativeOptions", "SpeculativeSampler", "SJDSampler", "MCSJDSampler",
           "GSDSampler"]

# fold_in indexes of the per-row keys outside the passes (pass t uses fold_in(key, t), t < N).
_FIRST_KEY, _INIT_KEY = 1 << 29, (1 << 29) + 1


@dataclasses.dataclass(frozen=True)
class SpeculativeOptions:
  window: int = 16        # W: tokens fed per pass = drafts verified per pass (1..N-1).
  gsd_radius: int = 7     # gsd: the group holds tokens within this many ranks of the draft.
  gsd_tol: float = 0.15   # gsd: ... whose probability differs from the draft's by < gsd_tol.
  max_tries: int = 100    # continuous_sjd: proposals of the residual's acceptance-rejection.

  def validate(self, num_tokens: Optional[int] = None):
    """Raises ValueError naming the field that is out of range (window against N - 1)."""
    for field in ("window", "gsd_radius", "max_tries"):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"speculative option {field}={value!r}; expected an integer")
    if self.max_tries < 1:
      raise ValueError(f"speculative option max_tries={self.max_tries}; expected >= 1")
    if self.window < 1:
      raise ValueError(f"speculative option window={self.window}; expected >= 1")
    if num_tokens is not None and self.window > num_tokens - 1:
      raise ValueError(f"speculative option window={self.window}; expected <= N - 1 = "
                       f"{num_tokens - 1} (the model has N={num_tokens} tokens per image)")
    if self.gsd_radius < 0:
      raise ValueError(f"speculative option gsd_radius={self.gsd_radius}; expected >= 0")
    if not (np.isfinite(self.gsd_tol) and 0.0 < self.gsd_tol <= 1.0):
      raise ValueError(f"speculative option gsd_tol={self.gsd_tol}; expected a value in (0, 1]")


class SpeculativeSampler(Sampler):
  """Base of 'sjd', 'mc_sjd', 'gsd' (module docstring); subclasses choose `accept_ratio`
  (how a draft is tested) and `redraft` (the drafts of the cells after a rejection)."""

  name = "speculative"
  speculative_options = ("window",)

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None,
               options: Optional[SpeculativeOptions] = None):
    super().__init__(fm, sampling, guidance)
    model = fm.bind(fm.abstract_params)
    self.num_tokens = int(model.tokenizer.tokens_per_image)
    # The options come from `sampling` (config.sampling.window, ...: SamplingConfig) or, in
    # code, from `options`; window 0 (the default) is min(16, N - 1). An explicit window is
    # checked, never shortened.
    if options is not None and sampling.speculative_set():
      raise ValueError(f"sampler {self.name!r} got speculative options twice: "
                       f"{list(sampling.speculative_set())} in the SamplingConfig and `options`")
    self.spec = options or SpeculativeOptions(
        window=sampling.window or min(SpeculativeOptions.window, self.num_tokens - 1),
        gsd_radius=sampling.gsd_radius, gsd_tol=sampling.gsd_tol, max_tries=sampling.max_tries)
    self.vocab_size = int(model.tokenizer.vocab_size)
    self.spec.validate(self.num_tokens)
    self._run = jax.jit(self._decode, donate_argnames=("caches",))
    self._init = jax.jit(lambda p, rows: self.fm.bind(p).init_cache(rows), static_argnums=1)

  @classmethod
  def cannot_run(cls, model) -> Optional[str]:
    order = getattr(model, "order", None)
    kind = getattr(order, "mask_kind", None)
    if order is not None and kind != "causal":
      return (f"order {order.name!r} uses {kind} attention masks; speculative decoding verifies "
              f"drafts in one causal pass and needs a causal order")
    if not (hasattr(model, "decode_tokens") and getattr(model, "supports_cached_raster", True)):
      return "it has no KV-cached next-token decoding (decode_prefix / decode_tokens)"
    if not raster_like(order):
      return "the order does not generate one cell per step in raster order"
    return cls.head_problem(model)

  @classmethod
  def head_problem(cls, model) -> Optional[str]:
    """None when the model's head gives the laws this sampler verifies, else why not."""
    head = getattr(model, "head", None)
    if head is None or not jnp.issubdtype(head.token_dtype, jnp.integer):
      return (f"head {type(head).__name__} draws continuous tokens; {cls.name!r} verifies "
              f"categorical probabilities (continuous tokens: 'continuous_sjd')")
    return None

  # -- the laws of the cells (categorical: probabilities [..., V]; continuous_sjd overrides) ----
  def target_law(self, dist, cells):
    """Distribution over [B, T] predicting cells int32 [B, T] -> a pytree of leaves [B, T, ...]:
    the law each cell is drawn from and tested against."""
    return self.target_probs(dist, cells)

  def initial_law(self):
    """The law of the initial drafts, one cell (leaves without [B, T])."""
    return jnp.full((self.vocab_size,), 1.0 / self.vocab_size, jnp.float32)

  def initial_drafts(self, key):
    """The initial drafts of one row [N, *T], drawn from `initial_law` per cell."""
    return jax.random.randint(key, (self.num_tokens,), 0, self.vocab_size, jnp.int32)

  def token_of(self, drafts):
    """The model's tokens of drafts [..., *D] (identity here; continuous_sjd on the diffusion
    head keeps whole denoising trajectories as drafts and feeds their last state)."""
    return drafts

  def draw_one(self, key, law):
    """One token [*T] from the law of one cell."""
    return jax.random.categorical(key, _log(law)).astype(jnp.int32)

  # -- the two rules subclasses choose -------------------------------------------------------------
  def accept_ratio(self, p, q, x):
    """p, q float32 [W, V], drafts x int32 [W] -> [W]: accept x_k if u < this (>= 1: always)."""
    px = jnp.take_along_axis(p, x[:, None], -1)[:, 0]
    qx = jnp.take_along_axis(q, x[:, None], -1)[:, 0]
    # q(x) > 0 for a draft drawn from q; a zero (underflow) rejects, which stays exact.
    return jnp.where(qx > 0, px / jnp.where(qx > 0, qx, 1.0), 0.0)

  def redraft(self, key, p, coupled):
    """New drafts [W] for the cells after a rejection: fresh draws from p [W, V] (SJD, GSD).
    coupled [W]: the old draft where the test accepted it, else the residual draw."""
    del coupled
    return jax.random.categorical(key, _log(p), axis=-1).astype(jnp.int32)

  # -- pieces of a pass ------------------------------------------------------------------------
  def target_probs(self, dist, cells):
    """dist: Distribution over [B (2B under CFG), T]; cells int32 [B, T] it predicts ->
    float32 [B, T, V], the law the sequential sampler draws each cell from."""
    logits = dist.logits
    if self.use_cfg:
      n = self.num_tokens
      cond, uncond = split_halves(dist)
      scale = self.guidance.at(self.guidance.progress(cells, n, cells, n))
      logits = cond.guide(uncond, scale[..., None]).logits
    t = self.sampling.temperature
    if t == 0.0:
      return jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=jnp.float32)
    return jax.nn.softmax(process_logits(logits, temperature=t, **self.options), -1)

  def verify_row(self, key, p, q, x, valid):
    """One row of a pass. p, q [W, V]: target and draft laws of the window's cells; x [W] their
    drafts; valid [W]: cells not yet committed. Returns (tokens [W]: committed values, new
    drafts or the old ones; commit bool [W]; after bool [W]: cells given new drafts; counts
    int32 [2]: residual draws committed (0 or 1) and those that fell back (always 0 here: the
    categorical residual is drawn exactly))."""
    w = x.shape[0]
    ku, kr, kf = jax.random.split(key, 3)
    u = jax.random.uniform(ku, (w,))
    accept = u < self.accept_ratio(p, q, x)
    residual = jnp.maximum(p - q, 0.0)
    # Where p == q to rounding, the residual vanishes: any rejection there is rounding noise
    # and p itself is the right law.
    empty = residual.sum(-1, keepdims=True) <= 1e-12
    draw = jax.random.categorical(kr, _log(jnp.where(empty, p, residual)), axis=-1)
    coupled = jnp.where(accept, x, draw.astype(jnp.int32))
    reject = valid & ~accept
    first = jnp.where(reject.any(), jnp.argmax(reject), w)
    j = jnp.arange(w)
    commit = valid & (j <= first)
    after = valid & (j > first)
    new = self.redraft(kf, p, coupled)
    counts = jnp.stack([(first < w).astype(jnp.int32), jnp.zeros((), jnp.int32)])
    return jnp.where(commit, coupled, jnp.where(after, new, x)), commit, after, counts

  # -- the jitted loop ---------------------------------------------------------------------------
  def init_caches(self, params, batch: int):
    return self._init(params, 2 * batch if self.use_cfg else batch)

  def _decode(self, params, labels, caches, keys):
    model = self.fm.bind(params)
    n, w = self.num_tokens, self.spec.window
    b = labels.shape[0]
    g = self.guidance
    rows = jnp.arange(b)
    dist, caches = model.decode_prefix(g.feed_labels(labels, model.null_class), caches)
    p0 = jax.tree.map(lambda a: a[:, 0], self.target_law(dist, jnp.zeros((b, 1), jnp.int32)))
    first = jax.vmap(lambda k, p: self.draw_one(jax.random.fold_in(k, _FIRST_KEY), p))(keys, p0)
    drafts = jax.vmap(lambda k: self.initial_drafts(jax.random.fold_in(k, _INIT_KEY)))(keys)
    tokens = drafts.at[:, 0].set(first)
    # Draft laws of the cells n_b ... n_b + W - 1 in a ring of W slots (cell k at slot k mod W);
    # cells past `stored` have never been predicted and keep their initial draws (initial_law).
    init = self.initial_law()
    ring = jax.tree.map(lambda a: jnp.zeros((b, w) + a.shape, a.dtype), init)
    carry = dict(tokens=tokens, q=ring,
                 stored=jnp.zeros((b,), jnp.int32), done=jnp.ones((b,), jnp.int32),
                 cache=caches, t=jnp.zeros((), jnp.int32), row_passes=jnp.ones((b,), jnp.int32),
                 counts=jnp.zeros((b, 2), jnp.int32))

    def body(c):
      active = c["done"] < n
      start = jnp.minimum(c["done"] - 1, n - 1 - w)  # first token fed: the last committed one.
      window = lambda a, s: jax.vmap(lambda r, i: jax.lax.dynamic_slice_in_dim(r, i, w))(a, s)
      fed = window(c["tokens"], start)
      dist, cache = model.decode_tokens(g.double(self.token_of(fed)), g.double(start),
                                        c["cache"])
      cells = start[:, None] + 1 + jnp.arange(w, dtype=jnp.int32)  # [B, W] cells predicted.
      p = self.target_law(dist, cells)
      x = window(c["tokens"], start + 1)
      slots = cells % w
      q_raw = jax.tree.map(lambda a: a[rows[:, None], slots], c["q"])
      seen = cells <= c["stored"][:, None]
      q = jax.tree.map(lambda a, i: jnp.where(_over(seen, a), a, i), q_raw, init)
      valid = cells >= c["done"][:, None]
      keys_t = jax.vmap(lambda k: jax.random.fold_in(k, c["t"]))(keys)
      new, commit, after, counts = jax.vmap(self.verify_row)(keys_t, p, q, x, valid)
      tokens = jax.vmap(lambda r, u, i: jax.lax.dynamic_update_slice_in_dim(r, u, i, 0))(
          c["tokens"], new, start + 1)
      q_new = jax.tree.map(
          lambda ring, pa, qa: ring.at[rows[:, None], slots].set(jnp.where(_over(after, pa), pa,
                                                                           qa)),
          c["q"], p, q_raw)
      return dict(tokens=tokens, q=q_new,
                  stored=jnp.where(active, start + w, c["stored"]),
                  done=c["done"] + commit.sum(-1).astype(jnp.int32), cache=cache,
                  t=c["t"] + 1, row_passes=c["row_passes"] + active.astype(jnp.int32),
                  counts=c["counts"] + jnp.where(active[:, None], counts, 0))

    c = jax.lax.while_loop(lambda c: (c["done"] < n).any(), body, carry)
    stats = {"passes": c["t"] + 1, "row_passes": c["row_passes"],
             "residual_draws": c["counts"][:, 0], "fallbacks": c["counts"][:, 1]}
    # Returning the caches lets XLA alias the donated buffers (updated in place).
    return self.token_of(c["tokens"]), stats, c["cache"]

  def row_keys(self, rng, batch: int):
    """One key, split per row, or a key per row [B] (typed or raw uint32 keys)."""
    rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
      rng = jax.random.wrap_key_data(rng)
    if rng.shape == ():
      return jax.random.split(rng, batch)
    if rng.shape == (batch,):
      return rng
    raise ValueError(f"rng has shape {rng.shape}; expected one key or one key per row "
                     f"[{batch}]")

  def sample_with_stats(self, params, labels, rng) -> Tuple[jax.Array, Dict[str, np.ndarray]]:
    """labels int32 [B], rng (one key or [B] keys) -> (tokens [B, N, *T], stats): passes, the
    forward passes the batch ran (prefix included; the batch runs until its slowest row is
    done); per row int32 [B]: row_passes, the passes each row needed, residual_draws, the
    tokens committed from a residual after a rejection, and fallbacks, those of them whose
    residual draw hit the try bound (continuous_sjd; 0 for the categorical samplers)."""
    b = labels.shape[0]
    caches = self.init_caches(params, b)
    tokens, stats, _ = self._run(params, labels, caches, self.row_keys(rng, b))
    return tokens, {k: np.asarray(s) for k, s in stats.items()}

  def sample_tokens(self, params, labels, rng, known=None, given=None):
    """labels int32 [B], rng -> tokens [B, N, *T] (categorical: int32 [B, N])."""
    if known is not None:
      raise ValueError(f"sampler {self.name!r} does not inpaint (known/given); use sampler "
                       f"'order'")
    return self.sample_with_stats(params, labels, rng)[0]


def _over(mask, a):
  """mask [B, W] reshaped to broadcast over a leaf a [B, W, ...]."""
  return mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim))


def _log(p):
  """log p with log 0 = -inf (categorical draws never pick a zero-probability token)."""
  return jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), -jnp.inf)


@SAMPLERS.register("sjd")
class SJDSampler(SpeculativeSampler):
  """Speculative Jacobi decoding with probabilistic acceptance (lossless)."""

  name = "sjd"


@SAMPLERS.register("mc_sjd")
class MCSJDSampler(SpeculativeSampler):
  """SJD with maximally coupled redrafts (lossless, higher acceptance)."""

  name = "mc_sjd"

  def redraft(self, key, p, coupled):
    del key, p  # the coupling reuses the test's uniform and residual draw.
    return coupled


@SAMPLERS.register("gsd")
class GSDSampler(SpeculativeSampler):
  """SJD with grouped acceptance over clusters of plausible tokens (lossy)."""

  name = "gsd"
  speculative_options = ("window", "gsd_radius", "gsd_tol")

  def accept_ratio(self, p, q, x):
    px = jnp.take_along_axis(p, x[:, None], -1)
    ranks = jnp.argsort(jnp.argsort(-p, axis=-1, stable=True), axis=-1, stable=True)
    rx = jnp.take_along_axis(ranks, x[:, None], -1)
    group = (jnp.abs(ranks - rx) <= self.spec.gsd_radius) & (jnp.abs(p - px) < self.spec.gsd_tol)
    pg = jnp.where(group, p, 0.0).sum(-1)
    qg = jnp.where(group, q, 0.0).sum(-1)
    return jnp.where(qg > 0, pg / jnp.where(qg > 0, qg, 1.0), 0.0)
