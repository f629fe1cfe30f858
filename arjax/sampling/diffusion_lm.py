"""Samplers of the text models in `arjax.models.diffusion_lm` (registered in SAMPLERS).

  text_ar    KV-cached next-token decoding of the 'ar' objective (one token per forward pass).
  mdlm       masked diffusion, K ancestral steps from t = 1 to 0 (Sahoo et al. 2024): at the
             step t -> s every masked token is revealed with probability (t - s) / t, drawn
             from p(x_0 | x_t); revealed tokens stay (SUBS carry-over). `lrd=True` refines
             each step's prediction with LRD's soft embeddings (`lrd_logits`, top-p mixture
             `lrd_mixture`); `lrd_phase_switch=True` replaces the K steps by LRD's two phases
             (`MaskedDiffusionSampler.lrd_two_phase`).
  sdar       SDAR's per-block decoding (JetAstra/SDAR `block_diffusion_generate`): blocks left
             to right; in each round the whole block is predicted and, with strategy 'static',
             the k = ceil(b / steps) most confident masked tokens are revealed, with 'dynamic'
             (low_confidence_dynamic) every masked token whose probability exceeds `threshold`,
             or the top k when fewer qualify. The block's K/V enter the cache only once the
             block is complete (one more forward pass of the clean block).
  fast_dllm  Fast-dLLM v2's decoding: the same block cache, the block split into sub-blocks of
             `sub_block` tokens decoded left to right; each round reveals the tokens of the
             current sub-block with probability above `threshold`, at least the most confident
             one. By default the block's own K/V are recomputed each round (its length is b) and
             only the earlier blocks are cached. `dual_cache=True` is Fast-dLLM v2's DualCache
             (NVlabs Fast_dLLM_v2 `batch_sample`): sub-blocks advance in lockstep over the
             batch; while the current sub-block's first token is masked in some row the whole
             block is run (its K/V, prefix and suffix of the sub-block, kept as the block
             cache), otherwise only the sub-block's tokens are run, over the earlier blocks'
             cache and the block cache (the sub-block's own K/V written fresh). The other
             positions' K/V are then those of the last whole-block pass: with one layer that is
             exact (their tokens did not change), with more layers it is Fast-dLLM's
             approximation (they depended on the sub-block's earlier state).

With threshold 1.0 no probability exceeds it, so 'dynamic' with steps = b and 'fast_dllm'
reveal one token per round, the most confident: one-token-at-a-time decoding. `cache=False`
recomputes every round with one block-causal pass over the whole sequence (the reference the
cached path must equal); a `model.token_shift` model decodes only this way, each round one
`bd3_shift_logits` pass over [BOS, x, x] (a block's first token from the clean output before
it). Every sampler also returns the number of forward passes it ran.

Legend: B batch, L sequence length, b block size, V vocabulary.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp

from arjax.core.functional import FunctionalModel
from arjax.heads.categorical import process_logits, sample_tokens
from arjax.kernels.masks import MaskSpec
from arjax.sampling.base import SAMPLERS, Sampler
from arjax.sampling.config import SamplingConfig
from arjax.sampling.guidance_schedule import GuidanceSchedule

STRATEGIES = ("static", "dynamic")


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """Options of the diffusion-LM samplers (fields named `sampling.<field>` in messages)."""
  steps: int = 16              # mdlm: K steps; sdar: rounds per block (k = ceil(b / steps)).
  block_size: int = 0          # decoding block size b (0: the model's own; mdlm model: L).
  strategy: str = "dynamic"    # sdar: 'static' | 'dynamic' (low-confidence dynamic).
  threshold: float = 0.9       # sdar 'dynamic' / fast_dllm: reveal probability threshold.
  sub_block: int = 0           # fast_dllm: sub-block size (0: the whole block).
  cache: bool = True           # block samplers: KV cache of finished blocks (False: recompute).
  lrd: bool = False            # mdlm: latent refinement decoding (see `lrd_*`).
  lrd_kl_stop: float = 1e-3    # LRD: stop refining when KL(prev || new) per token falls below.
  lrd_max_rounds: int = 4      # LRD: forward passes per step at most (1: no refinement).
  lrd_top_p: float = 1.0       # LRD: the soft embedding mixes the top-p nucleus of p (1: all V).
  lrd_phase_switch: bool = False  # LRD's two phases (see `lrd_two_phase`) instead of LRD
  #                               # refinement inside each of the K ancestral steps.
  lrd_kl_decode: float = 1e-3  # LRD phase 2: a row whose KL(prev || new) per token falls below
  #                            # commits all its remaining tokens (early stop).
  dual_cache: bool = False     # fast_dllm: Fast-dLLM v2's DualCache (sub-block cache reuse).

  def validate(self, seq_len: int, model_block: int):
    if not (isinstance(self.steps, int) and self.steps >= 1):
      raise ValueError(f"sampling.steps={self.steps!r}; expected an integer >= 1")
    b = self.block_size or model_block
    if not (isinstance(b, int) and b >= 1 and seq_len % b == 0):
      raise ValueError(f"sampling.block_size={b} does not divide the sequence length {seq_len}")
    if not (isinstance(self.threshold, (int, float)) and 0.0 < self.threshold <= 1.0):
      raise ValueError(f"sampling.threshold={self.threshold!r}; expected a value in (0, 1]")
    if self.strategy not in STRATEGIES:
      raise ValueError(f"sampling.strategy={self.strategy!r}; expected one of {STRATEGIES}")
    sb = self.sub_block or b
    if not (isinstance(sb, int) and sb >= 1 and b % sb == 0):
      raise ValueError(f"sampling.sub_block={sb} does not divide the block size {b}")
    if not (isinstance(self.lrd_max_rounds, int) and self.lrd_max_rounds >= 1):
      raise ValueError(f"sampling.lrd_max_rounds={self.lrd_max_rounds!r}; expected >= 1")
    if not self.lrd_kl_stop >= 0.0:
      raise ValueError(f"sampling.lrd_kl_stop={self.lrd_kl_stop!r}; expected >= 0")
    if not (isinstance(self.lrd_top_p, (int, float)) and 0.0 < self.lrd_top_p <= 1.0):
      raise ValueError(f"sampling.lrd_top_p={self.lrd_top_p!r}; expected a value in (0, 1]")
    if not self.lrd_kl_decode >= 0.0:
      raise ValueError(f"sampling.lrd_kl_decode={self.lrd_kl_decode!r}; expected >= 0")
    if self.lrd_phase_switch and not self.lrd:
      raise ValueError("sampling.lrd_phase_switch=True needs sampling.lrd=True")
    if self.dual_cache and not self.cache:
      raise ValueError("sampling.dual_cache=True needs sampling.cache=True (it reuses the cache)")
    return b, sb


def top_k_mask(score, k):
  """bool [B, N]: the k[B] highest scores of each row (score -inf: never chosen)."""
  rank = jnp.argsort(jnp.argsort(-score, axis=-1), axis=-1)
  return (rank < k[:, None]) & jnp.isfinite(score)


class _TextSampler(Sampler):
  objectives = ()

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None, decode: Optional[DecodeOptions] = None):
    super().__init__(fm, sampling, guidance)
    if self.use_cfg:
      raise ValueError(f"sampler {self.name!r}: the text models are unconditional; "
                       "cfg_scale must be 1")
    model = fm.bind(fm.abstract_params)
    self.decode = decode or DecodeOptions()
    model_block = model.fields.block_size if model.objective == "bd3lm" else model.seq_len
    self.block, self.sub_block = self.decode.validate(model.seq_len, model_block)
    self.token_shift = model.fields.token_shift
    if self.token_shift and self.decode.cache:
      raise ValueError("sampling.cache=True: a model.token_shift=True model decodes with "
                       "sampling.cache=False (each round one pass of `bd3_shift_logits`; its "
                       "block starts read the clean pass, which the block cache does not hold)")
    self.seq_len = model.seq_len
    self._run = jax.jit(self._sample, static_argnums=(2,))

  @classmethod
  def cannot_run(cls, model):
    if getattr(model, "objective", None) not in cls.objectives:
      return f"it needs a 'diffusion_lm' model with objective in {cls.objectives}"
    return None

  def draw(self, logits, key):
    """(tokens [B, N], confidence [B, N]: the drawn token's probability; greedy at T = 0)."""
    t = self.sampling.temperature
    tok = sample_tokens(key, logits, temperature=t, **self.options)
    probs = jax.nn.softmax(process_logits(logits, temperature=t if t > 0 else 1.0,
                                          **self.options), -1)
    return tok, jnp.take_along_axis(probs, tok[..., None], -1)[..., 0]

  def sample_tokens(self, params, labels, rng, known=None, given=None):
    """labels: int32 [B] (only its length is read: the batch) -> tokens int32 [B, L]."""
    return self.sample(params, rng, labels.shape[0])[0]

  def sample(self, params, rng, batch: int):
    """-> (tokens int32 [B, L], number of forward passes int32 [])."""
    return self._run(params, rng, batch)


@SAMPLERS.register("text_ar")
class TextARSampler(_TextSampler):
  name = "text_ar"
  objectives = ("ar",)

  def _sample(self, params, rng, batch):
    model = self.fm.bind(params)
    n = self.seq_len

    def body(i, c):
      tokens, caches, prev = c
      logits, caches = model.ar_step(prev, i, caches)
      tok, _ = self.draw(logits, jax.random.fold_in(rng, i))
      return tokens.at[:, i].set(tok), caches, tok[:, None]

    start = jnp.full((batch, 1), model.bos_id, jnp.int32)
    tokens, _, _ = jax.lax.fori_loop(
        0, n, body, (jnp.zeros((batch, n), jnp.int32), model.init_cache(batch), start))
    return tokens, jnp.asarray(n, jnp.int32)


@SAMPLERS.register("mdlm")
class MaskedDiffusionSampler(_TextSampler):
  name = "mdlm"
  objectives = ("mdlm",)

  def _sample(self, params, rng, batch):
    model = self.fm.bind(params)
    if self.decode.lrd_phase_switch:
      return self.lrd_two_phase(model, rng, batch)
    n, k_steps = self.seq_len, self.decode.steps
    tokens = jnp.full((batch, n), model.mask_id, jnp.int32)

    def body(k, c):
      tokens, nfe = c
      t = 1.0 - k / k_steps
      s = 1.0 - (k + 1) / k_steps
      key = jax.random.fold_in(rng, k)
      masked = tokens == model.mask_id
      if self.decode.lrd:
        logits, rounds = lrd_logits(model, tokens, self.decode)
      else:
        logits, rounds = model.mdlm_logits(tokens), 1
      draw, _ = self.draw(logits, jax.random.fold_in(key, 0))
      # Reveal with probability (alpha_s - alpha_t) / (1 - alpha_t) = (t - s) / t.
      reveal = masked & (jax.random.uniform(jax.random.fold_in(key, 1), masked.shape)
                         < (t - s) / t)
      return jnp.where(reveal, draw, tokens), nfe + rounds

    return jax.lax.fori_loop(0, k_steps, body, (tokens, jnp.zeros((), jnp.int32)))

  def lrd_two_phase(self, model, rng, batch):
    """LRD's two phases (arXiv 2510.11052, no official code; this is our reading of the paper).
    Phase 1, latent refinement: every position soft (`lrd_logits` from the all-[MASK] start)
    until the mean KL between successive predictions falls below `lrd_kl_stop` or
    `lrd_max_rounds` passes ran; then the phase switch. Phase 2, predictive feedback loop: each
    pass feeds committed tokens hard and the others as soft mixtures of the previous
    prediction, draws every position, and commits the drawn tokens whose probability exceeds
    `threshold`, at least the k = ceil(L / steps) most confident (so at most `steps` passes);
    a row whose KL(previous || new) per uncommitted token falls below `lrd_kl_decode` commits
    all its remaining tokens (the early stop).
    Returns (tokens int32 [B, L], forward passes int32 [])."""
    n, opts = self.seq_len, self.decode
    mask_id = model.mask_id
    tokens = jnp.full((batch, n), mask_id, jnp.int32)
    logits, rounds = lrd_logits(model, tokens, opts)
    k_min = math.ceil(n / opts.steps)

    def cond(c):
      return jnp.any(c[0] == mask_id)

    def body(c):
      tokens, prev, nfe, it = c
      open_ = tokens == mask_id
      new = _soft_forward(model, _lrd_embed(model, tokens, prev, opts.lrd_top_p))
      lp, lq = jax.nn.log_softmax(prev, -1), jax.nn.log_softmax(new, -1)
      kl = jnp.where(open_, (jnp.exp(lp) * (lp - lq)).sum(-1), 0.0)
      kl = kl.sum(-1) / jnp.maximum(open_.sum(-1), 1)
      draw, conf = self.draw(new, jax.random.fold_in(rng, it))
      score = jnp.where(open_, conf, -jnp.inf)
      commit = (top_k_mask(score, jnp.minimum(k_min, open_.sum(-1)))
                | (open_ & (conf > opts.threshold))
                | (open_ & (kl < opts.lrd_kl_decode)[:, None]))
      return jnp.where(commit, draw, tokens), new, nfe + 1, it + 1

    tokens, _, nfe, _ = jax.lax.while_loop(cond, body, (tokens, logits, rounds,
                                                        jnp.zeros((), jnp.int32)))
    return tokens, nfe


def lrd_mixture(p, table, mask_emb, top_p: float = 1.0):
  """LRD's soft embedding of a masked position: (1 - a) e_[MASK] + a sum_v q(v) e_v.

  p [..., V] the current prediction; table [V, D] the symbols' embeddings; mask_emb [D]; q = p
  restricted to its top-p nucleus (the fewest most probable symbols whose mass reaches top_p,
  renormalised; top_p = 1: q = p); a = 1 - H(p) / log V, the normalised entropy of the full
  prediction. -> [..., D]."""
  q = p
  if top_p < 1.0:
    srt = jnp.flip(jnp.sort(p, -1), -1)
    keep_sorted = (jnp.cumsum(srt, -1) - srt) < top_p   # mass before it still below top_p
    smallest = jnp.min(jnp.where(keep_sorted, srt, jnp.inf), -1, keepdims=True)
    q = jnp.where(p >= smallest, p, 0.0)
    q = q / q.sum(-1, keepdims=True)
  ent = -(p * jnp.log(jnp.maximum(p, 1e-12))).sum(-1) / math.log(p.shape[-1])
  a = (1.0 - ent)[..., None]
  return (1 - a) * mask_emb + a * (q @ table)


def _soft_forward(model, emb):
  """Embeddings [B, L, D] -> logits [B, L, V], bidirectional (the MDLM pass)."""
  b, n = emb.shape[:2]
  pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  h, _ = model.backbone(emb, positions=pos, mask=MaskSpec(kind="bidirectional"))
  return model.head(h).logits


def _lrd_embed(model, tokens, logits, top_p: float):
  """Hard embeddings of the revealed tokens, LRD mixtures of softmax(logits) at [MASK]."""
  table = model.embed.embedding[...]
  hard = jnp.take(table, tokens, axis=0)
  mix = lrd_mixture(jax.nn.softmax(logits, -1), table[:model.vocab_size], table[model.mask_id],
                    top_p)
  return jnp.where((tokens == model.mask_id)[..., None], mix.astype(hard.dtype), hard)


def lrd_logits(model, tokens, opts: DecodeOptions):
  """Latent refinement (LRD, arXiv 2510.11052; no official code, so this follows the paper's
  description): masked positions are fed as soft embeddings (`lrd_mixture`: (1 - a) e_[MASK] +
  a sum_{v in top-p} q(v) e_v with a = 1 - normalised entropy of the current prediction), and
  the prediction is refined until the mean KL(previous || new) over masked tokens falls below
  `lrd_kl_stop` (so at least one refinement: the first KL needs two predictions) or
  `lrd_max_rounds` passes were run. Returns (logits [B, L, V], forward passes used)."""
  masked = tokens == model.mask_id
  table = model.embed.embedding[...]

  def run(x):
    return _soft_forward(model, x)

  hard = jnp.take(table, tokens, axis=0)
  logits = run(hard)

  def soft(logits):
    return _lrd_embed(model, tokens, logits, opts.lrd_top_p)

  def cond(c):
    _, r, kl = c
    return (r < opts.lrd_max_rounds) & (kl > opts.lrd_kl_stop)

  def body(c):
    logits, r, _ = c
    new = run(soft(logits))
    lp, lq = jax.nn.log_softmax(logits, -1), jax.nn.log_softmax(new, -1)
    kl = (jnp.exp(lp) * (lp - lq)).sum(-1)
    kl = jnp.sum(jnp.where(masked, kl, 0.0)) / jnp.maximum(masked.sum(), 1)
    return new, r + 1, kl

  logits, rounds, _ = jax.lax.while_loop(cond, body, (logits, jnp.ones((), jnp.int32),
                                                     jnp.asarray(jnp.inf, jnp.float32)))
  return logits, rounds


class _BlockSampler(_TextSampler):
  objectives = ("bd3lm", "mdlm")

  def reveal(self, masked, score, r, current=None):
    """masked bool [B, b], score [B, b] (-inf where not masked), round r, current: the
    lockstep sub-block (DualCache) or None -> bool [B, b] tokens to reveal."""
    raise NotImplementedError

  def _sample(self, params, rng, batch):
    model = self.fm.bind(params)
    n, bs = self.seq_len, self.block
    mask_id = model.mask_id
    tokens = jnp.full((batch, n), mask_id, jnp.int32)
    use_cache, dual = self.decode.cache, self.decode.dual_cache
    caches = model.init_cache(batch) if use_cache else None

    def block_body(j, c):
      tokens, caches, nfe, rnd = c
      start = j * bs

      def logits_of(tokens, dcache):
        """-> (logits [B, b, V], block cache (DualCache) or None, lockstep sub-block or None)."""
        blk = jax.lax.dynamic_slice_in_dim(tokens, start, bs, 1)
        if dual:
          return self._dual_logits(model, blk, start, caches, dcache)
        if use_cache:
          return model.decode_block(blk, start, caches, bs)[0], dcache, None
        if self.token_shift:  # the training pass: earlier blocks clean in both halves.
          full = model.bd3_shift_logits(tokens, tokens, bs)
          return jax.lax.dynamic_slice_in_dim(full, start, bs, 1), dcache, None
        full = model.recompute_logits(tokens, bs)
        return jax.lax.dynamic_slice_in_dim(full, start, bs, 1), dcache, None

      def cond(c):
        tokens = c[0]
        return jnp.any(jax.lax.dynamic_slice_in_dim(tokens, start, bs, 1) == mask_id)

      def round_(c):
        tokens, dcache, nfe, rnd, r = c
        blk = jax.lax.dynamic_slice_in_dim(tokens, start, bs, 1)
        logits, dcache, current = logits_of(tokens, dcache)
        draw, conf = self.draw(logits, jax.random.fold_in(rng, rnd))
        masked = blk == mask_id
        rev = self.reveal(masked, jnp.where(masked, conf, -jnp.inf), r, current)
        blk = jnp.where(rev, draw, blk)
        return (jax.lax.dynamic_update_slice_in_dim(tokens, blk, start, 1), dcache, nfe + 1,
                rnd + 1, r + 1)

      # The DualCache's block cache starts as the prefix cache: the first round of a block
      # always runs the whole block (its first sub-block's first token is masked).
      tokens, _, nfe, rnd, _ = jax.lax.while_loop(
          cond, round_, (tokens, caches, nfe, rnd, jnp.zeros((), jnp.int32)))
      if use_cache:  # the finished block's K/V enter the cache (one pass of the clean block).
        blk = jax.lax.dynamic_slice_in_dim(tokens, start, bs, 1)
        caches = model.decode_block(blk, start, caches, bs)[1]
        nfe = nfe + 1
      return tokens, caches, nfe, rnd

    zero = jnp.zeros((), jnp.int32)
    tokens, _, nfe, _ = jax.lax.fori_loop(0, n // bs, block_body, (tokens, caches, zero, zero))
    return tokens, nfe

  def _dual_logits(self, model, blk, start, caches, dcache):
    """Fast-dLLM v2's DualCache round (NVlabs Fast_dLLM_v2 `batch_sample`, use_block_cache).
    blk int32 [B, b] the current block; caches: the prefix cache (earlier blocks); dcache: the
    block cache of the last whole-block pass. The current sub-block is the first one holding a
    masked token in any row (lockstep over the batch). While its first token is masked in some
    row the whole block runs over the prefix cache and its K/V become the block cache; otherwise
    only the sub-block's tokens run over the block cache, writing their own K/V at their slots.
    -> (logits [B, b, V] (zero outside the sub-block after a sub-block pass), block cache,
    current sub-block int32 [])."""
    bs, sb = self.block, self.sub_block
    masked = blk == model.mask_id
    open_sub = jnp.any(masked.reshape(blk.shape[0], bs // sb, sb), axis=(0, 2))
    current = jnp.argmax(open_sub).astype(jnp.int32)
    s0 = current * sb
    need_whole = jnp.any(jax.lax.dynamic_index_in_dim(masked, s0, 1, keepdims=False))

    def whole(_):
      return model.decode_block(blk, start, caches, bs)

    def sub(_):
      part = jax.lax.dynamic_slice_in_dim(blk, s0, sb, 1)
      logits, dc = model.decode_block(part, start + s0, dcache, bs)
      full = jnp.zeros(blk.shape + logits.shape[-1:], logits.dtype)
      return jax.lax.dynamic_update_slice_in_dim(full, logits, s0, 1), dc

    logits, dcache = jax.lax.cond(need_whole, whole, sub, None)
    return logits, dcache, current


@SAMPLERS.register("sdar")
class SDARSampler(_BlockSampler):
  name = "sdar"

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    if self.decode.dual_cache:
      raise ValueError("sampling.dual_cache=True is a 'fast_dllm' option (sub-block cache reuse); "
                       "sampler 'sdar' has no sub-blocks")

  def reveal(self, masked, score, r, current=None):
    k = jnp.minimum(math.ceil(self.block / self.decode.steps), masked.sum(-1))
    top = top_k_mask(score, k)
    if self.decode.strategy == "static":
      return top
    return top | (masked & (score > self.decode.threshold))


@SAMPLERS.register("fast_dllm")
class FastDLLMSampler(_BlockSampler):
  name = "fast_dllm"

  def reveal(self, masked, score, r, current=None):
    sb = self.sub_block
    b = masked.shape[0]
    # The current sub-block of each row: the first one that still holds a masked token (with
    # the DualCache the lockstep one of the whole batch).
    sub = jnp.arange(self.block) // sb
    if current is None:
      first = jnp.min(jnp.where(masked, sub[None], self.block), -1)
    else:
      first = jnp.full((b,), current, jnp.int32)
    cand = masked & (sub[None] == first[:, None])
    score = jnp.where(cand, score, -jnp.inf)
    return top_k_mask(score, jnp.ones((b,), jnp.int32)) | (cand & (score > self.decode.threshold))
