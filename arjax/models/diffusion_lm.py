"""Text generators on one network: causal AR, masked diffusion (MDLM) and block diffusion (BD3-LM).

One transformer over token embeddings (V symbols plus [MASK] = V and [BOS] = V + 1) with a
categorical head over the V symbols. The three objectives share every parameter, so a trained
AR model restores into the block-diffusion model (SDAR's conversion by continued training):

  ar      inputs [BOS, x_0 .. x_{L-2}] under the causal mask predict x_0 .. x_{L-1}.
  mdlm    masked (absorbing-state) diffusion, Sahoo et al. 2024: x_t masks each token with
          probability 1 - alpha_t, alpha_t = 1 - t (log-linear), bidirectional attention; the
          continuous-time NELBO is E_t [ w(t) sum_{i masked} -log p(x_i | x_t) ] with
          w(t) = -alpha'_t / (1 - alpha_t) = 1/t (SUBS parameterisation: unmasked tokens carry
          over, so only masked positions cost).
  bd3lm   block diffusion, Arriola et al. 2025: blocks of `block_size` tokens, each a masked
          diffusion given the clean earlier blocks, with its own t; x_t and x_0 run in one pass
          of 2L tokens under `arjax.kernels.masks.block_diffusion_mask`. Training draws t from
          the clipped range U[noise_min, noise_max]; the likelihood bound uses U[0, 1].

Fast-dLLM v2's training options (NVlabs Fast_dLLM_v2, arXiv 2509.26328), both off by default:

  complementary  each window is used twice, with its mask m and with 1 - m, so every position
                 is supervised exactly once per pair; the complement of a mask drawn at t is a
                 mask drawn at 1 - t, so it carries the weight 1 / (1 - t) and each copy, hence
                 their mean, stays an unbiased estimate of the NELBO (objectives mdlm, bd3lm).
  token_shift    (bd3lm) a masked x_i is predicted from the output at the position before it,
                 keeping the AR model's next-token head: inside a block from the noisy half's
                 x_{t,i-1}, at a block start from the clean half's x_{i-1}, and x_0 from a [BOS]
                 in front of the 2L layout that every token sees. With b = 1 this is exactly
                 the 'ar' objective's pass (the same keys and positions), see `bd3_shift_logits`.

With t ~ U[0, 1] the loss is an upper bound of -log p(x) in nats (the bits/char bound divides
by L ln 2); `nelbo_exact` enumerates every mask for tiny L (the tests' reference).

Legend: B batch, L sequence length, b block size, nB = L / b blocks, D width, V vocabulary.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from arjax.heads.categorical import CategoricalHead
from arjax.kernels.masks import MaskSpec, block_diffusion_mask
from arjax.models.registry import MODELS, model_fields
from arjax.nn.layers import Embed
from arjax.nn.transformer import Transformer, TransformerConfig
from arjax.tokenizers import build_tokenizer
from arjax.tokenizers.char import CHARS, TextTokenizer

OBJECTIVES = ("ar", "mdlm", "bd3lm")


@dataclasses.dataclass(frozen=True)
class DiffusionLMFields:
  """`config.model` of 'diffusion_lm' (sub-node `model.backbone`: TransformerConfig)."""
  SUBNODES = {"backbone": TransformerConfig}
  objective: str = "mdlm"      # 'ar' | 'mdlm' | 'bd3lm'.
  vocab_size: int = 65         # V symbols (the character tokenizer's vocabulary).
  seq_len: int = 64            # L tokens per training window.
  block_size: int = 4          # b for 'bd3lm' (must divide seq_len).
  noise_min: float = 0.0       # BD3-LM's clipped noise range: t ~ U[noise_min, noise_max]
  noise_max: float = 1.0       #   in training (the likelihood bound always uses U[0, 1]).
  complementary: bool = False  # Fast-dLLM v2: each window also with the complementary mask.
  token_shift: bool = False    # Fast-dLLM v2 (bd3lm): x_i predicted from position i - 1.

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ValueError(f"model.objective={self.objective!r}; expected one of {OBJECTIVES}")
    if self.vocab_size < 2:
      raise ValueError(f"model.vocab_size={self.vocab_size}; expected >= 2")
    if self.seq_len < 1:
      raise ValueError(f"model.seq_len={self.seq_len}; expected >= 1")
    if not (isinstance(self.block_size, int) and self.block_size >= 1
            and self.seq_len % self.block_size == 0):
      raise ValueError(f"model.block_size={self.block_size} does not divide model.seq_len="
                       f"{self.seq_len}")
    if not 0.0 <= self.noise_min <= self.noise_max <= 1.0 or self.noise_max <= 0.0:
      raise ValueError(f"model.noise_min={self.noise_min}, model.noise_max={self.noise_max}; "
                       "expected 0 <= noise_min <= noise_max <= 1 and noise_max > 0")
    if self.complementary and self.objective == "ar":
      raise ValueError("model.complementary=True needs model.objective 'mdlm' or 'bd3lm' (it "
                       "pairs diffusion masks), got 'ar'")
    if self.token_shift and self.objective != "bd3lm":
      raise ValueError(f"model.token_shift=True needs model.objective 'bd3lm', got "
                       f"{self.objective!r}")


class _Vocab:
  def __init__(self, n):
    self.vocab_size = n


class DiffusionLM(nnx.Module):
  """Token sequences int32 [B, L] in 0..V-1 (see the module docstring).

  A model of `python -m arjax.train` (config.model.name = 'diffusion_lm', configs/text/): its
  evaluation is the trainer's 'text' one (validation bits/char from `loss(train=False)`, which is
  the exact NLL for 'ar' and the NELBO bound otherwise, `nll_is_bound`; text samples from
  `default_sampler()`), decoded through `tokenizer` (the config's; built directly: the 65
  characters of tiny Shakespeare when V = 65)."""

  evaluation = "text"   # arjax.train.evaluation: bits/char and text samples.

  def __init__(self, fields: DiffusionLMFields, backbone: TransformerConfig, *, rngs: nnx.Rngs,
               tokenizer=None):
    if backbone.position not in ("rope1d", "learned", "none"):
      raise ValueError(f"model.backbone.position={backbone.position!r}; a text model needs "
                       "'rope1d', 'learned' or 'none'")
    self.fields = fields
    self.vocab_size, self.seq_len = fields.vocab_size, fields.seq_len
    self.mask_id, self.bos_id = fields.vocab_size, fields.vocab_size + 1
    dt = backbone.compute_dtype
    self.embed = Embed(fields.vocab_size + 2, backbone.dim, rngs=rngs, dtype=dt)
    self.backbone = Transformer(backbone, rngs=rngs)
    self.head = CategoricalHead(backbone.dim, _Vocab(fields.vocab_size), rngs=rngs, dtype=dt)
    self.rngs = rngs
    if tokenizer is None:
      tokenizer = TextTokenizer(fields.vocab_size, fields.seq_len,
                                CHARS if fields.vocab_size == len(CHARS) else "")
    self.tokenizer = tokenizer

  @property
  def objective(self) -> str:
    return self.fields.objective

  @property
  def nll_is_bound(self) -> bool:
    """True when `loss(train=False)` is an upper bound of the NLL (the NELBO), not the NLL."""
    return self.objective != "ar"

  @property
  def block_size(self) -> int:
    return self.fields.block_size if self.objective == "bd3lm" else self.seq_len

  # -- forward passes -----------------------------------------------------------------------------
  def _run(self, tokens, positions, mask, caches=None, cache_index=None, train=False):
    h, caches = self.backbone(self.embed(tokens), positions=positions, mask=mask, caches=caches,
                              cache_index=cache_index, deterministic=not train)
    return self.head(h).logits, caches

  def ar_logits(self, x, train=False):
    """x int32 [B, L] -> logits [B, L, V] of p(x_i | x_<i)."""
    b, n = x.shape
    inp = jnp.concatenate([jnp.full((b, 1), self.bos_id, x.dtype), x[:, :-1]], 1)
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    return self._run(inp, pos, MaskSpec(kind="causal"), train=train)[0]

  def mdlm_logits(self, xt, train=False):
    """x_t int32 [B, L] (mask_id where masked) -> logits [B, L, V] of p(x_0 | x_t)."""
    b, n = xt.shape
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    return self._run(xt, pos, MaskSpec(kind="bidirectional"), train=train)[0]

  def bd3_logits(self, xt, x0, block_size: int, train=False):
    """x_t, x_0 int32 [B, L] -> logits [B, L, V] of block diffusion (the noisy half's outputs)."""
    b, n = xt.shape
    pos = jnp.broadcast_to(jnp.tile(jnp.arange(n, dtype=jnp.int32), 2), (b, 2 * n))
    logits, _ = self._run(jnp.concatenate([xt, x0], 1), pos, block_diffusion_mask(n, block_size),
                          train=train)
    return logits[:, :n]

  def bd3_shift_logits(self, xt, x0, block_size: int, train=False):
    """Token shift (Fast-dLLM v2): x_t, x_0 int32 [B, L] -> logits [B, L, V] of x_i from the
    output before it. One pass over [BOS, x_t, x_0] (2L + 1 tokens; positions 0, 1..L, 1..L)
    under the 2L block-diffusion mask plus a [BOS] column every token sees ([BOS] sees only
    itself). x_i reads the noisy output at x_{t,i-1} inside a block, the clean output at
    x_{i-1} at a block start (it sees the clean blocks before, as a decoder has them), and
    [BOS]'s output for i = 0."""
    b, n = xt.shape
    pos = jnp.concatenate([jnp.zeros((1,), jnp.int32),
                           jnp.tile(jnp.arange(1, n + 1, dtype=jnp.int32), 2)])
    inner = block_diffusion_mask(n, block_size).dense[0, 0]
    dense = jnp.zeros((2 * n + 1, 2 * n + 1), bool).at[1:, 1:].set(inner).at[:, 0].set(True)
    inp = jnp.concatenate([jnp.full((b, 1), self.bos_id, xt.dtype), xt, x0], 1)
    logits, _ = self._run(inp, jnp.broadcast_to(pos, (b, 2 * n + 1)),
                          MaskSpec(kind="dense", dense=dense[None, None]), train=train)
    i = jnp.arange(n)
    src = jnp.where(i % block_size == 0, jnp.where(i == 0, 0, n + i), i)
    return jnp.take(logits, src, axis=1)

  def denoise_logits(self, xt, x0, train=False):
    """Logits of p(x_0 | x_t) under this model's objective (mdlm or bd3lm)."""
    if self.objective == "bd3lm" and self.fields.token_shift:
      return self.bd3_shift_logits(xt, x0, self.block_size, train=train)
    if self.objective == "bd3lm":
      return self.bd3_logits(xt, x0, self.block_size, train=train)
    if self.objective == "mdlm":
      return self.mdlm_logits(xt, train=train)
    raise ValueError("denoise_logits needs model.objective 'mdlm' or 'bd3lm', got 'ar'")

  # -- noise and losses ---------------------------------------------------------------------------
  def draw_t(self, key, batch: int, lo: float, hi: float):
    """t float32 [B, nB]: one per block (per sequence for mdlm), stratified over the batch
    (MDLM's low-discrepancy sampler: (u + k / n) mod 1 over the n = B * nB draws, shuffled)."""
    nb = self.seq_len // self.block_size
    n = batch * nb
    k1, k2 = jax.random.split(key)
    u = (jax.random.uniform(k1, ()) + jnp.arange(n, dtype=jnp.float32) / n) % 1.0
    u = jax.random.permutation(k2, u).reshape(batch, nb)
    return lo + (hi - lo) * u

  def corrupt(self, key, x, t_blocks, scored=None):
    """x int32 [B, L], t [B, nB] -> (x_t [B, L], masked bool [B, L], t per token [B, L]).
    scored bool [B, L] (None: all): tokens outside it are never masked (they are given)."""
    t_tok = jnp.repeat(t_blocks, self.block_size, axis=1)
    masked = jax.random.uniform(key, x.shape) < t_tok
    if scored is not None:
      masked = masked & scored
    return jnp.where(masked, self.mask_id, x), masked, t_tok

  def nelbo_terms(self, x, key, lo: float = 0.0, hi: float = 1.0, train=False, scored=None):
    """Per-sequence loss [B] in nats: the AR NLL, or the diffusion NELBO estimate with t drawn
    from U[lo, hi] (an unbiased estimate of the bound when (lo, hi) = (0, 1)). scored bool
    [B, L] (None: all): only these tokens cost; for diffusion the others stay clean, so the
    bound is that of -log p(scored tokens | the others)."""
    if self.objective == "ar":
      ce = optax.softmax_cross_entropy_with_integer_labels(self.ar_logits(x, train), x)
      return (ce if scored is None else jnp.where(scored, ce, 0.0)).sum(-1)
    kt, km = jax.random.split(key)
    t_blocks = self.draw_t(kt, x.shape[0], lo, hi)
    if self.fields.complementary:
      (xt, masked, t_tok), (xc, mc, tc) = self.corrupt_pair(km, x, t_blocks, scored)
      both = self.weighted_nll(jnp.concatenate([x, x]), jnp.concatenate([xt, xc]),
                               jnp.concatenate([masked, mc]), jnp.concatenate([t_tok, tc]),
                               train)
      return 0.5 * (both[:x.shape[0]] + both[x.shape[0]:])
    xt, masked, t_tok = self.corrupt(km, x, t_blocks, scored)
    return self.weighted_nll(x, xt, masked, t_tok, train)

  def corrupt_pair(self, key, x, t_blocks, scored=None):
    """Complementary masking: (x_t, masked, t per token) of `corrupt` and its complement
    (masked' = not masked, t' = 1 - t), each [B, L]; tokens outside `scored` stay given in both."""
    xt, masked, t_tok = self.corrupt(key, x, t_blocks, scored)
    mc = ~masked if scored is None else (~masked & scored)
    return (xt, masked, t_tok), (jnp.where(mc, self.mask_id, x), mc, 1.0 - t_tok)

  def weighted_nll(self, x, xt, masked, t_tok, train=False):
    ce = optax.softmax_cross_entropy_with_integer_labels(self.denoise_logits(xt, x, train), x)
    # w(t) = -alpha'_t / (1 - alpha_t) = 1 / t for alpha_t = 1 - t; t > 0 whenever a token is
    # masked with positive probability, the floor only guards t = 0 exactly.
    return jnp.sum(jnp.where(masked, ce / jnp.maximum(t_tok, 1e-6), 0.0), -1)

  def loss(self, batch: Dict[str, jax.Array], *, train: bool) -> Tuple[jax.Array, Dict]:
    """batch['tokens'] int32 [B, L] (optional 'token_mask' float [B, L]: scored tokens, and
    'mask' float [B]: real rows of a padded evaluation batch) -> (loss in nats per scored token,
    metrics). Training uses the clipped noise range and the module's 'sample' stream; evaluation
    the full range U[0, 1] (so 'nll' is the NELBO bound of the diffusion objectives) with a key
    fixed by the batch's tokens, so an evaluation is reproducible and batches draw apart."""
    x = batch["tokens"]
    if x.ndim != 2 or x.shape[1] != self.seq_len:
      raise ValueError(f"batch['tokens'] has shape {tuple(x.shape)}; expected [B, "
                       f"model.seq_len={self.seq_len}]")
    scored = jnp.ones(x.shape, bool)
    if "token_mask" in batch:
      scored = scored & (batch["token_mask"] > 0)
    if "mask" in batch:
      scored = scored & (batch["mask"][:, None] > 0)
    f = self.fields
    if train:
      lo, hi, key = f.noise_min, f.noise_max, self.rngs.sample()
    else:
      lo, hi = 0.0, 1.0
      # A deterministic function of the batch (position-weighted token sum).
      weights = jnp.arange(x.size, dtype=jnp.uint32).reshape(x.shape) * jnp.uint32(2654435761)
      code = jnp.sum(x.astype(jnp.uint32) * (weights + jnp.uint32(1)))
      key = jax.random.fold_in(jax.random.key(0), code)
    per_seq = self.nelbo_terms(x, key, lo, hi, train, scored)
    count = scored.sum().astype(jnp.float32)
    loss = per_seq.sum() / jnp.maximum(count, 1.0)
    return loss, {"loss": loss, "nll": loss, "bits_per_dim": loss / math.log(2),
                  "bits_per_token": loss / math.log(2), "num_tokens": count}

  # -- decoding (arjax.sampling.diffusion_lm) ----------------------------------------------------
  def init_cache(self, batch: int):
    return self.backbone.init_cache(batch, self.seq_len)

  def ar_step(self, token, index, caches):
    """KV-cached AR step: token int32 [B, 1] (BOS at index 0, else x_{index-1}) at position and
    cache slot `index` -> (logits [B, V] of x_index, caches)."""
    b = token.shape[0]
    pos = jnp.full((b, 1), index, jnp.int32)
    logits, caches = self._run(token, pos, MaskSpec(kind="causal", q_offset=index), caches=caches,
                               cache_index=index)
    return logits[:, 0], caches

  def _block_mask(self, q_ids, block_size: int):
    kv_ids = jnp.arange(self.seq_len, dtype=jnp.int32)[None] // block_size
    return MaskSpec(kind="block_causal", q_block_ids=q_ids, kv_block_ids=kv_ids)

  def decode_block(self, block, start, caches, block_size: int):
    """Block x_t int32 [B, b] at positions start .. start + b - 1 over KV caches holding the
    clean blocks before it -> (logits [B, b, V], caches with this block's K/V written at its
    slots). The block sees itself bidirectionally and the cached earlier blocks (block-causal
    ids); slots of later blocks are hidden. Callers keep the returned caches only once the block
    is complete (SDAR), so a partly masked block never enters the cache."""
    b = block.shape[1]
    pos = jnp.broadcast_to(start + jnp.arange(b, dtype=jnp.int32), block.shape)
    q_ids = jnp.full((1, b), start // block_size, jnp.int32)
    return self._run(block, pos, self._block_mask(q_ids, block_size), caches=caches,
                     cache_index=start)

  def recompute_logits(self, tokens, block_size: int):
    """tokens int32 [B, L] (clean earlier blocks, the current block partly masked) -> logits
    [B, L, V] from one block-causal pass over the whole sequence, no cache (the reference of
    cached block decoding: a block's logits depend only on itself and earlier blocks)."""
    b, n = tokens.shape
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    q_ids = jnp.arange(n, dtype=jnp.int32)[None] // block_size
    return self._run(tokens, pos, self._block_mask(q_ids, block_size))[0]

  def default_sampler(self) -> str:
    return {"ar": "text_ar", "mdlm": "mdlm", "bd3lm": "sdar"}[self.objective]


# -- exact references for tiny L ---------------------------------------------------------------
def nelbo_exact(logits_fn, x, block_size: int, mask_id: int) -> np.ndarray:
  """Exact continuous-time NELBO [B] (nats) of a masked / block diffusion model, by enumerating
  every masked subset of every block (tiny L only).

  Per block of b tokens with its own t ~ U[0, 1]: the integral of (1/t) t^m (1 - t)^(b - m) over
  t is B(m, b - m + 1) = (m - 1)! (b - m)! / b!, so the NELBO is the sum over non-empty masked
  sets M of that weight times sum_{i in M} -log p(x_i | x_t). Other blocks are left clean, which
  is exact because a block's terms depend only on earlier clean blocks and itself.
  logits_fn(x_t, x_0) -> logits [B, L, V].
  """
  x = np.asarray(x)
  bsz, n = x.shape
  total = np.zeros(bsz)
  for start in range(0, n, block_size):
    for m_set in itertools.product([False, True], repeat=block_size):
      m = sum(m_set)
      if m == 0:
        continue
      masked = np.zeros(n, bool)
      masked[start:start + block_size] = m_set
      xt = np.where(masked[None], mask_id, x)
      logp = np.asarray(jax.nn.log_softmax(logits_fn(jnp.asarray(xt), jnp.asarray(x)), -1),
                        np.float64)
      nll = -np.take_along_axis(logp, x[..., None], -1)[..., 0]
      weight = math.factorial(m - 1) * math.factorial(block_size - m) / math.factorial(block_size)
      total += weight * nll[:, masked].sum(-1)
  return total


@MODELS.register("diffusion_lm", fields=DiffusionLMFields)
def _build(config, *, rngs):
  fields = model_fields(DiffusionLMFields, config)
  tokenizer = build_tokenizer(config)
  if not getattr(tokenizer, "is_text", False):
    raise ValueError(f"model 'diffusion_lm' needs a text tokenizer (tokenizer.name 'char' or "
                     f"'sequence'), not {config.tokenizer.name!r}")
  if tokenizer.vocab_size != fields.vocab_size:
    raise ValueError(f"model.vocab_size={fields.vocab_size} but tokenizer "
                     f"{config.tokenizer.name!r} has {tokenizer.vocab_size} symbols; set them equal")
  if tokenizer.length != fields.seq_len:
    raise ValueError(f"model.seq_len={fields.seq_len} but tokenizer.length={tokenizer.length}; "
                     "set them equal")
  return DiffusionLM(fields, TransformerConfig.from_config(config.model.backbone), rngs=rngs,
                     tokenizer=tokenizer)
