"""Samplers of the text models in `arjax.models.diffusion_lm` (registered in SAMPLERS).

  text_ar    KV-cached next-token decoding of the 'ar' objective (one token per forward pass).
  mdlm       masked diffusion, K ancestral steps from t = 1 to 0 (Sahoo et al. 2024): at the
             step t -> s every masked token is revealed with probability (t - s) / t, drawn
             from p(x_0 | x_t); revealed tokens stay (SUBS carry-over).
  sdar       SDAR's per-block decoding (JetAstra/SDAR `block_diffusion_generate`): blocks left
             to right; in each round the whole block is predicted and, with strategy 'static',
             the k = ceil(b / steps) most confident masked tokens are revealed, with 'dynamic'
             (low_confidence_dynamic) every masked token whose probability exceeds `threshold`,
             or the top k when fewer qualify. The block's K/V enter the cache only once the
             block is complete (one more forward pass of the clean block).
  fast_dllm  Fast-dLLM v2's decoding: the same block cache, the block split into sub-blocks of
             `sub_block` tokens decoded left to right; each round reveals the tokens of the
             current sub-block with probability above `threshold`, at least the most confident
             one. The block's own K/V are recomputed each round (its length is b), only the
             earlier blocks are cached (the DualCache suffix cache is not implemented).

With threshold 1.0 no probability exceeds it, so 'dynamic' with steps = b and 'fast_dllm'
reveal one token per round, the most confident: one-token-at-a-time decoding. `cache=False`
recomputes every round with one block-causal pass over the whole sequence (the reference the
cached path must equal). Every sampler also returns the number of forward passes it ran.

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


def lrd_logits(model, tokens, opts: DecodeOptions):
  """Latent refinement (LRD, arXiv 2510.11052; no official code, so this follows the paper's
  description): masked positions are fed as soft embeddings, (1 - a) e_[MASK] + a sum_v p(v)
  e_v with a = 1 - normalised entropy of the current prediction, and the prediction is refined
  until the mean KL(previous || new) over masked tokens falls below `lrd_kl_stop` (so at least
  one refinement: the first KL needs two predictions) or `lrd_max_rounds` passes were run.
  Returns (logits [B, L, V], forward passes used)."""
  b, n = tokens.shape
  masked = tokens == model.mask_id
  table = model.embed.embedding[...]
  pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  bidir = MaskSpec(kind="bidirectional")

  def run(x):
    h, _ = model.backbone(x, positions=pos, mask=bidir)
    return model.head(h).logits

  hard = jnp.take(table, tokens, axis=0)
  logits = run(hard)

  def soft(logits):
    p = jax.nn.softmax(logits, -1)
    ent = -(p * jnp.log(jnp.maximum(p, 1e-12))).sum(-1) / math.log(p.shape[-1])
    a = (1.0 - ent)[..., None]
    mix = (1 - a) * table[model.mask_id] + a * (p @ table[:model.vocab_size])
    return jnp.where(masked[..., None], mix.astype(hard.dtype), hard)

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

  def reveal(self, cand, conf, r):
    raise NotImplementedError

  def _sample(self, params, rng, batch):
    model = self.fm.bind(params)
    n, bs = self.seq_len, self.block
    mask_id = model.mask_id
    tokens = jnp.full((batch, n), mask_id, jnp.int32)
    use_cache = self.decode.cache
    caches = model.init_cache(batch) if use_cache else None

    def block_body(j, c):
      tokens, caches, nfe, rnd = c
      start = j * bs

      def logits_of(tokens):
        if use_cache:
          blk = jax.lax.dynamic_slice_in_dim(tokens, start, bs, 1)
          return model.decode_block(blk, start, caches, bs)[0]
        full = model.recompute_logits(tokens, bs)
        return jax.lax.dynamic_slice_in_dim(full, start, bs, 1)

      def cond(c):
        tokens = c[0]
        return jnp.any(jax.lax.dynamic_slice_in_dim(tokens, start, bs, 1) == mask_id)

      def round_(c):
        tokens, nfe, rnd, r = c
        blk = jax.lax.dynamic_slice_in_dim(tokens, start, bs, 1)
        draw, conf = self.draw(logits_of(tokens), jax.random.fold_in(rng, rnd))
        masked = blk == mask_id
        rev = self.reveal(masked, jnp.where(masked, conf, -jnp.inf), r)
        blk = jnp.where(rev, draw, blk)
        return (jax.lax.dynamic_update_slice_in_dim(tokens, blk, start, 1), nfe + 1, rnd + 1,
                r + 1)

      tokens, nfe, rnd, _ = jax.lax.while_loop(cond, round_, (tokens, nfe, rnd,
                                                              jnp.zeros((), jnp.int32)))
      if use_cache:  # the finished block's K/V enter the cache (one pass of the clean block).
        blk = jax.lax.dynamic_slice_in_dim(tokens, start, bs, 1)
        caches = model.decode_block(blk, start, caches, bs)[1]
        nfe = nfe + 1
      return tokens, caches, nfe, rnd

    zero = jnp.zeros((), jnp.int32)
    tokens, _, nfe, _ = jax.lax.fori_loop(0, n // bs, block_body, (tokens, caches, zero, zero))
    return tokens, nfe


@SAMPLERS.register("sdar")
class SDARSampler(_BlockSampler):
  name = "sdar"

  def reveal(self, masked, score, r):
    k = jnp.minimum(math.ceil(self.block / self.decode.steps), masked.sum(-1))
    top = top_k_mask(score, k)
    if self.decode.strategy == "static":
      return top
    return top | (masked & (score > self.decode.threshold))


@SAMPLERS.register("fast_dllm")
class FastDLLMSampler(_BlockSampler):
  name = "fast_dllm"

  def reveal(self, masked, score, r):
    sb = self.sub_block
    b = masked.shape[0]
    # The current sub-block of each row: the first one that still holds a masked token.
    sub = jnp.arange(self.block) // sb
    first = jnp.min(jnp.where(masked, sub[None], self.block), -1)
    cand = masked & (sub[None] == first[:, None])
    score = jnp.where(cand, score, -jnp.inf)
    return top_k_mask(score, jnp.ones((b,), jnp.int32)) | (cand & (score > self.decode.threshold))
