"""HART: hybrid autoregressive transformer (Tang et al. 2024, "HART: Efficient Visual Generation
with Hybrid Autoregressive Transformer"; mit-han-lab/hart hart_transformer_t2i.py,
HARTForC2IConfig), class-conditional: VAR (arjax.models.var) plus a residual diffusion head.

Tokens: the hybrid tokenizer (MultiScaleVQ with `hybrid=True`) gives VAR's N discrete tokens and
the continuous residual r = f - f_hat_discrete [B, h_K^2, Dv] on the last scale's grid.

  discrete   VAR unchanged (subclass): next-scale prediction, CE over the N tokens.
  residual   the last scale's hidden states h [B, h_K^2, C] (the final block's output, before
             VAR's head) condition MAR's per-token diffusion head (arjax.heads.diffusion,
             SimpleMLPAdaLN of width diff_width and depth diff_depth, cosine schedule, DDPM,
             `diffusion_batch_mul` draws, `num_sampling_steps` = 8 at sampling):
                 z = LN(h + word_embed(e[q_K]))            (HART's decoder_norm, affine LN)
             q_K: the last scale's token (training: drawn from the model's own last-scale
             logits after top-k condition_top_k = 600 / top-p condition_top_p = 0.96 when
             `sampled_condition`, HART's; else the target token), e the frozen codebook,
             word_embed VAR's input Linear (shared, as HART's).
             target: f - f_hat_{<K} - phi_K(e[q_K]), the residual left by the conditioning token
             (= the tokenizer's residual r when q_K is the target token).
  masking    (`mask_last_scale`, HART's MAR-style last scale, training only) one fraction r per
             batch ~ N(1, 0.25) truncated to [0.5, 1]; min(ceil(r s^2), s^2 - mask_keep_min)
             last-scale cells, a random set per row, are dropped from the sequence (HART's
             x_BLC[mask]; here: hidden from every slot by a block-causal mask, `keep_mask`); CE
             over the earlier scales and the kept cells, the diffusion loss over the kept cells.
             mask_last_scale=False: VAR's causal training of every token.
  loss       CE + diff_weight * diffusion loss (both means over their tokens).

Sampling (arjax.sampling.next_scale): the K scales as VAR, then the residual head samples the
h_K^2 residual tokens (8 respaced DDPM steps, CFG on eps at the last scale's guidance scale)
and f = f_hat_discrete + residual is what the tokenizer's decoder reads. num_maskgit_iters > 1:
HART's MaskGIT iterations on the last scale, a random order per row (HART has no confidence
rule), cells per iteration by HART's cosine schedule (`maskgit_counts`); the last scale's inputs
do not depend on what the iterations draw, so the sampler runs them as one pass under the mask
HART's KV-cached loop implies (`last_scale_reveal_steps`, VAR.decode_scale_hidden).

Deviations from the released code, named: the evaluation loss (train=False) is not masked (every
token, a deterministic metric); HART keeps phi off the last scale in its generator tokens (here
VAR's quantizer applies phi_K, and the target and the sample use the same phi_K, so f is
reconstructed the same way); HART's mask_len clamp n - 32 is negative below 32 cells, where its
slicing masks more; here the count is clipped to [0, n - 1] (`mask_keep_min` sets the 32). HART's
loss weighting between CE and the diffusion loss and its CE normalisation over the kept cells are
in its training script, which is not released: diff_weight = 1 and a mean over the trained tokens
are assumptions.

Legend: B batch, N tokens, K scales, C width, Dv code dim, s = h_K the last side.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax.heads.base import token_metrics
from arjax.heads.diffusion import DiffusionFields, DiffusionHead
from arjax.models.autoencoder import frozen_autoencoder
from arjax.models.flexvar import encoder_latents
from arjax.models.registry import MODELS
from arjax.models.var import VAR, VarFields
from arjax.nn.layers import make_param
from arjax.orders import register_support
from arjax.orders.schedules import cosine_masked_counts
from arjax.registry import ranged


@dataclasses.dataclass(frozen=True)
class HartFields(VarFields):
  """`config.model` of 'hart': VAR's fields plus the residual diffusion head's."""
  diff_width: int = ranged(1024, lo=1, integer=True)           # SimpleMLPAdaLN width (HART: 1024).
  diff_depth: int = ranged(6, lo=1, integer=True)              # its residual blocks (HART: 6).
  diffusion_batch_mul: int = ranged(4, lo=1, integer=True)     # (t, eps) draws per token (HART: 4).
  num_sampling_steps: int = ranged(8, lo=1, hi=1000, integer=True)   # respaced DDPM steps (HART: 8).
  diff_weight: float = ranged(1.0, lo=0.0)       # loss = CE + diff_weight * diffusion.
  sampled_condition: bool = True                 # condition on a drawn q_K in training (HART).
  condition_top_k: int = ranged(600, lo=0, integer=True)   # top-k of that draw (0: off; HART 600).
  condition_top_p: float = ranged(0.96, lo=0.0, lo_open=True, hi=1.0)  # its top-p (1: off).
  mask_last_scale: bool = True        # MAR-style training of the last scale (HART); False: VAR's.
  mask_ratio_min: float = ranged(0.5, lo=0.0, hi=1.0, hi_open=True)  # least masked fraction.
  mask_ratio_std: float = ranged(0.25, lo=0.0, lo_open=True)   # fraction ~ N(1, std) on [min, 1].
  mask_keep_min: int = ranged(32, lo=1, integer=True)  # cells never masked (HART: 32 of 4096).
  num_maskgit_iters: int = ranged(1, lo=1, integer=True)   # last-scale sampling iterations.


class HART(VAR):
  """See the module docstring."""

  FIELDS = HartFields

  def __init__(self, config, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    from arjax.models.registry import model_fields
    m = model_fields(HartFields, config)
    self.diff_weight, self.sampled_condition = m.diff_weight, m.sampled_condition
    self.condition_top_k, self.condition_top_p = m.condition_top_k, m.condition_top_p
    self.mask_last_scale, self.mask_keep_min = m.mask_last_scale, m.mask_keep_min
    self.mask_ratio_min, self.mask_ratio_std = m.mask_ratio_min, m.mask_ratio_std
    self.num_maskgit_iters = m.num_maskgit_iters
    if self.order.markovian and (m.mask_last_scale or m.num_maskgit_iters > 1):
      raise ValueError("model 'hart': model.mask_last_scale / model.num_maskgit_iters > 1 need "
                       "the block-causal scale mask; order.markovian=True is not supported")
    c = self.width
    self.last_side = self.scales[-1]
    self.res_norm_scale = make_param(rngs, nnx.initializers.ones, (c,), ("embed",))
    self.res_norm_bias = make_param(rngs, nnx.initializers.zeros, (c,), ("embed",))
    fields = DiffusionFields(width=m.diff_width, depth=m.diff_depth,
                             diffusion_batch_mul=m.diffusion_batch_mul,
                             num_sampling_steps=m.num_sampling_steps)
    # The head's token width is the code dim Dv (the residual lives in the quantizer's space).
    self.residual_head = DiffusionHead(c, types.SimpleNamespace(token_dim=m.code_dim), fields,
                                       rngs=rngs)

  # -- the residual head's condition ---------------------------------------------------------
  def residual_condition(self, hidden, last_tokens):
    """hidden [B, s^2, C] (last scale), last_tokens int32 [B, s^2] ->
    z = LN(hidden + word_embed(e[last_tokens])) [B, s^2, C] (affine LN, eps norm_eps)."""
    vq = self.scale_quantizer()
    e = jnp.take(jax.lax.stop_gradient(vq.codebook[...]), last_tokens, axis=0)
    x = hidden.astype(jnp.float32) + self.word_embed(e)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    x = (x - mean) * jax.lax.rsqrt(var + self.norm_eps)
    return x * self.res_norm_scale[...] + self.res_norm_bias[...]

  def residual_dist(self, hidden, last_tokens):
    """-> the diffusion head's Distribution over [B, s^2] residual tokens of Dv channels."""
    return self.residual_head(self.residual_condition(hidden, last_tokens))

  def residual_target(self, tokens, f, last_tokens):
    """f - f_hat_{<K} - phi_K(e[last_tokens]) as [B, s^2, Dv]; tokens int32 [B, N] (the
    target's), f [B, s, s, Dv] the encoder latent (f_hat_discrete + the tokenizer's residual)."""
    vq = self.scale_quantizer()
    b, s = tokens.shape[0], self.last_side
    partial = vq.partial_reconstructions(tokens)
    before = partial[-2] if len(partial) > 1 else jnp.zeros_like(partial[-1])
    e = jnp.take(vq.codebook[...], last_tokens.reshape(b, s, s), axis=0)
    last = vq._upsample(len(self.scales) - 1, e)
    return jax.lax.stop_gradient(f - before - last).reshape(b, s * s, self.code_dim)

  # -- the last scale: MAR-style masking in training, MaskGIT iterations in sampling ---------
  def last_scale_keep(self, key, b: int):
    """HART's training mask of the last scale (`random_masking`): bool [B, s^2], True where a
    cell is kept (fed and predicted); a masked cell is dropped from the sequence. One masked
    fraction r per batch from N(1, mask_ratio_std) truncated to [mask_ratio_min, 1], then
    min(ceil(r s^2), s^2 - mask_keep_min) cells (clipped to [0, s^2 - 1]) masked in a random
    order per row."""
    n = self.last_side ** 2
    k_ratio, k_order = jax.random.split(key)
    lower = (self.mask_ratio_min - 1.0) / self.mask_ratio_std
    r = 1.0 + self.mask_ratio_std * jax.random.truncated_normal(k_ratio, lower, 0.0, (),
                                                               jnp.float32)
    num = jnp.minimum(jnp.ceil(n * r).astype(jnp.int32), n - self.mask_keep_min)
    num = jnp.clip(num, 0, n - 1)
    rank = jnp.argsort(jnp.argsort(jax.random.uniform(k_order, (b, n)), axis=1), axis=1)
    return rank >= num

  def keep_mask(self, keep_last):
    """keep_last bool [B, s^2] -> the block-causal MaskSpec over the N slots in which the masked
    last-scale cells are hidden from every other slot (their block id is K, one past the last
    scale's): what HART's dropping them from the sequence computes for the kept slots."""
    from arjax.kernels.masks import MaskSpec
    b, n, k = keep_last.shape[0], self.last_side ** 2, len(self.scales)
    ids = jnp.broadcast_to(self.order.level_ids[None], (b, self.num_tokens))
    ids = ids.at[:, -n:].set(jnp.where(keep_last, k - 1, k).astype(jnp.int32))
    return MaskSpec(kind="block_causal", q_block_ids=ids, kv_block_ids=ids)

  def draw_condition(self, key, logits):
    """The training draw of q_K (HART's `sampled_condition`): logits [..., V] -> int32 [...]
    from the softmax after top-k (condition_top_k) then top-p (condition_top_p) filtering."""
    from arjax.heads.categorical import sample_tokens
    return sample_tokens(key, logits, top_k=self.condition_top_k, top_p=self.condition_top_p)

  def maskgit_counts(self) -> Tuple[int, ...]:
    """Cells of the last scale revealed at each of the num_maskgit_iters iterations."""
    return maskgit_counts(self.last_side ** 2, self.num_maskgit_iters)

  def last_scale_reveal_steps(self, key, b: int):
    """The MaskGIT iteration at which each last-scale cell is drawn: int32 [B, s^2] (None at
    num_maskgit_iters = 1: one pass). HART's order is random per row (no confidence ranking):
    after iteration t the first mask_len_t cells of the order stay masked, so the order's last
    cells are drawn first (`maskgit_counts`)."""
    if self.num_maskgit_iters == 1:
      return None
    n, counts = self.last_side ** 2, self.maskgit_counts()
    step_of_rank = np.concatenate([np.full(c, t, np.int32) for t, c in enumerate(counts)])[::-1]
    order = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, b))
    return jnp.asarray(step_of_rank.copy())[jnp.argsort(order, axis=1)]

  # -- training ----------------------------------------------------------------------------
  def batch_hybrid(self, batch) -> Tuple[jax.Array, jax.Array]:
    """(tokens int32 [B, N], residual [B, s, s, Dv]) of a batch: 'tokens' with 'residual'
    ([B, s^2, Dv] or [B, s, s, Dv]), or 'image' through the hybrid tokenizer."""
    s, dv = self.last_side, self.code_dim
    if "image" in batch and "residual" not in batch:
      tokens, _, residual = self._tokenizer_split(batch["image"])
      return tokens, residual
    if "tokens" not in batch or "residual" not in batch:
      raise ValueError(f"model 'hart' trains on images (through the hybrid tokenizer) or on "
                       f"batches with 'tokens' [B, {self.num_tokens}] and 'residual' "
                       f"[B, {s * s}, {dv}]; the batch has {sorted(batch)}")
    r = batch["residual"]
    b = r.shape[0]
    if tuple(r.shape[1:]) not in ((s * s, dv), (s, s, dv)):
      raise ValueError(f"model 'hart': batch 'residual' must be [B, {s * s}, {dv}] (the last "
                       f"scale's {s}x{s} grid x model.code_dim={dv}), got {list(r.shape)}")
    return batch["tokens"], r.reshape(b, s, s, dv).astype(jnp.float32)

  def check_cache_fields(self, shapes, source: str):
    """A token cache (data without images) must give 'tokens' [N] and 'residual' [s^2, Dv] per
    example: shapes {field: per-example shape} (arjax.data.dataset_info). ValueError naming the
    file (data.source, its train split) and the missing or misshapen field."""
    s, dv = self.last_side, self.code_dim
    where = source
    if source.startswith("array_record:"):
      where = f"file {source.split(':', 1)[1].replace('{split}', 'train')!r}"
    want = {"tokens": (self.num_tokens,), "residual": (s * s, dv)}
    for name, shape in want.items():
      if name not in shapes:
        raise ValueError(f"model 'hart' trains from a token cache with 'tokens' "
                         f"[{self.num_tokens}] and 'residual' [{s * s}, {dv}] per record; "
                         f"{where} (data.source) has no {name!r} field (fields "
                         f"{sorted(shapes)}): write it with `python -m arjax.tokenize` from a "
                         f"hybrid tokenizer run (model.quantizer.hybrid=True)")
      if tuple(shapes[name]) != shape:
        raise ValueError(f"model 'hart': {where} (data.source) has {name!r} of shape "
                         f"{list(shapes[name])} per record; expected {list(shape)}")

  def _autoencoder(self):
    """The autoencoder module behind the tokenizer (bound), for images -> latents."""
    ae = frozen_autoencoder(self.tokenizer)
    if ae is not None:
      return ae
    raise ValueError("model 'hart' reads images through its hybrid tokenizer run "
                     "(tokenizer.checkpoint = a 'multiscale' run with quantizer.hybrid=True)")

  def _tokenizer_split(self, images):
    """uint8 images -> (tokens, f_hat_discrete, residual) through the frozen hybrid run."""
    return self.scale_quantizer().hybrid_split(encoder_latents(self.tokenizer, images))

  def encode_images(self, images):
    """uint8 images [B, H, W, C] -> (tokens int32 [B, N], residual [B, s, s, Dv])."""
    tokens, _, residual = self._tokenizer_split(images)
    return tokens, residual

  def loss(self, batch: Dict[str, jax.Array], *, train: bool
           ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    tokens, residual = self.batch_hybrid(batch)
    tokens = tokens.astype(jnp.int32)
    if tokens.shape[1] != self.num_tokens:
      raise ValueError(f"model 'hart' expects {self.num_tokens} tokens per image "
                       f"(order.scales={list(self.scales)}), the batch has {tokens.shape[1]}")
    b, s = tokens.shape[0], self.last_side
    labels = batch["label"].astype(jnp.int32)
    if train and self.class_dropout > 0:
      keep = jax.random.uniform(self.rngs.dropout(), labels.shape) >= self.class_dropout
      labels = jnp.where(keep, labels, self.null_class)
    key = self.rngs.dropout() if train and self.drop_path > 0 else None
    # HART's MAR-style last scale (training only: the evaluation loss covers every token).
    keep_last = (self.last_scale_keep(self.rngs.sample(), b)
                 if train and self.mask_last_scale else None)
    mask = None if keep_last is None else self.keep_mask(keep_last)
    hidden, cond = self.hidden_inputs(self.next_scale_inputs(tokens), labels, train=train,
                                      key=key, mask=mask)
    dist = self.head(hidden, cond)
    weights = None
    if "mask" in batch:
      weights = jnp.broadcast_to(batch["mask"][:, None], tokens.shape).astype(jnp.float32)
    if keep_last is not None:  # CE on every earlier scale and on the kept last-scale cells
      kept = jnp.concatenate([jnp.ones((b, self.num_tokens - s * s), jnp.float32),
                              keep_last.astype(jnp.float32)], 1)
      weights = kept if weights is None else weights * kept
    ce, per_token = dist.loss(tokens, weights=weights)
    w = jnp.ones_like(per_token) if weights is None else weights
    metrics = token_metrics(dist, ce, per_token, tokens, w)
    # The residual head on the last scale.
    k_draw, k_diff = jax.random.split(self.rngs.sample() if train else jax.random.key(0))
    target_last = tokens[:, -s * s:]
    if self.sampled_condition:
      last_logits = jax.lax.stop_gradient(dist.logits[:, -s * s:])
      cond_tokens = self.draw_condition(k_draw, last_logits)
    else:
      cond_tokens = target_last
    f = self.scale_quantizer().partial_reconstructions(tokens)[-1] + residual
    target = self.residual_target(tokens, f, cond_tokens)
    rdist = self.residual_dist(hidden[:, -s * s:], cond_tokens)
    rw = None if weights is None else weights[:, -s * s:]
    diff, _ = rdist.loss(target, key=k_diff, weights=rw)
    metrics.update(ce_loss=ce, diff_loss=diff)
    loss = ce + self.diff_weight * diff
    metrics["loss"] = loss
    return loss, metrics

  # -- decoding ------------------------------------------------------------------------------
  # decode_scale_hidden (VAR's) gives the last scale's hidden states to the sampler.
  def decode_fhat(self, f_hat):
    """f [B, s, s, Dv] (f_hat_discrete + residual) -> uint8 images through the tokenizer run."""
    from arjax.models.autoencoder import to_uint8
    ae = self._autoencoder()
    q = ae.quantizer
    z = f_hat if q.proj_out is None else q.proj_out(f_hat)
    return to_uint8(ae.decode_latents(z))


def maskgit_counts(n: int, iters: int) -> Tuple[int, ...]:
  """HART's last-scale MaskGIT schedule (autoregressive_infer_cfg): cells revealed at each of
  `iters` iterations over n cells, by MAR's cosine count (`cosine_masked_counts`: the cells
  still masked after each iteration)."""
  left = cosine_masked_counts(n, iters)
  return tuple(before - after for before, after in zip([n] + left[:-1], left))


register_support("hart", mask_kinds=("block",), orders=("scales",))


@MODELS.register("hart", fields=HartFields)
def _build(config, *, rngs):
  return HART(config, rngs=rngs)
