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
             logits when `sampled_condition`, HART's; else the target token), e the frozen
             codebook, word_embed VAR's input Linear (shared, as HART's).
             target: f - f_hat_{<K} - phi_K(e[q_K]), the residual left by the conditioning token
             (= the tokenizer's residual r when q_K is the target token).
  loss       CE + diff_weight * diffusion loss (both means over their tokens).

Sampling (arjax.sampling.next_scale): the K scales as VAR, then the residual head samples the
h_K^2 residual tokens (8 respaced DDPM steps, CFG on eps at the last scale's guidance scale)
and f = f_hat_discrete + residual is what the tokenizer's decoder reads.

Deviations from the released code, named: the last scale is drawn in one pass (HART's
num_maskgit_iters default 1 draws it in one MaskGIT step too, but trains it with MAR-style
masking of the last scale, which is not done here: every last-scale token is predicted
causally over scales as VAR); the training draw of q_K is plain categorical (HART: top-k 600,
top-p 0.96); HART keeps phi off the last scale in its generator tokens (here VAR's quantizer
applies phi_K, and the target and the sample use the same phi_K, so f is reconstructed the same
way). HART's loss weighting between CE and the diffusion loss is in its training script, which
is not released: diff_weight = 1 is an assumption.

Legend: B batch, N tokens, K scales, C width, Dv code dim, s = h_K the last side.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from arjax.heads.base import token_metrics
from arjax.heads.diffusion import DiffusionFields, DiffusionHead
from arjax.models.registry import MODELS
from arjax.models.flexvar import encoder_latents
from arjax.models.var import VAR, VarFields
from arjax.nn.layers import make_param
from arjax.orders import register_support
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


class HART(VAR):
  """See the module docstring."""

  FIELDS = HartFields

  def __init__(self, config, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    from arjax.models.registry import model_fields
    m = model_fields(HartFields, config)
    self.diff_weight, self.sampled_condition = m.diff_weight, m.sampled_condition
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

  def _autoencoder(self):
    """The autoencoder module behind the tokenizer (bound), for images -> latents."""
    seen = self.tokenizer
    for _ in range(4):
      if seen is None:
        break
      if hasattr(seen, "latents") and hasattr(seen, "quantizer"):
        return seen
      if hasattr(seen, "fm") and hasattr(seen, "variables"):
        return seen.fm.bind(seen.variables)
      seen = getattr(seen, "decoder", None)
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
    hidden, cond = self.hidden_inputs(self.next_scale_inputs(tokens), labels, train=train,
                                      key=key)
    dist = self.head(hidden, cond)
    weights = None
    if "mask" in batch:
      weights = jnp.broadcast_to(batch["mask"][:, None], tokens.shape).astype(jnp.float32)
    ce, per_token = dist.loss(tokens, weights=weights)
    w = jnp.ones_like(per_token) if weights is None else weights
    metrics = token_metrics(dist, ce, per_token, tokens, w)
    # The residual head on the last scale.
    k_draw, k_diff = jax.random.split(self.rngs.sample() if train else jax.random.key(0))
    target_last = tokens[:, -s * s:]
    if self.sampled_condition:
      last_logits = jax.lax.stop_gradient(dist.logits[:, -s * s:])
      cond_tokens = jax.random.categorical(k_draw, last_logits).astype(jnp.int32)
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


register_support("hart", mask_kinds=("block",), orders=("scales",))


@MODELS.register("hart", fields=HartFields)
def _build(config, *, rngs):
  return HART(config, rngs=rngs)
