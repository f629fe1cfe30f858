"""MAR: masked autoregressive generation over continuous tokens (Li et al. 2024, "Autoregressive
Image Generation without Vector Quantization"; LTH14/mar models/mar.py).

An MAE-style bidirectional encoder-decoder turns the known tokens into a condition z_i for every
position; a continuous head (config field `model.head`: 'diffusion' is MAR's diffusion loss,
'flow' and 'gmm' work the same way) models p(x_i | z_i) for the unknown positions.

  encoder   [buffer_size slots holding the class embedding, Linear(x_1) ... Linear(x_N)]
            + learned positions -> LayerNorm -> ViT blocks over the buffer and the VISIBLE tokens
            -> final LayerNorm. MAR drops the masked tokens; here they stay in the sequence but
            attention lets visible queries see only visible keys (segment ids), so the visible
            outputs are the same and shapes stay static under jit.
  decoder   Linear to the decoder width at visible slots, a learned [MASK] vector at masked ones,
            + learned positions -> ViT blocks (full attention) -> final LayerNorm; the buffer
            slots are dropped and `diffusion_pos_embed` [N, Dd] is added -> z [B, N, Dd].
  head      head(z) -> a Distribution over [B, N] (arjax.heads.base).

Training (`loss`): one mask ratio per batch from the truncated normal on [mask_ratio_min, 1]
(mean 1, std `mask_ratio_std`; arjax.orders.schedules.mar_mask_ratio), ceil(N ratio) tokens masked
in a random order per row; the class is replaced by the null class (MAR's `fake_latent`, row
`num_classes` of the class table) with probability `class_dropout`; the loss is the head's on the
masked tokens only.

Sampling: the 'order' sampler over the order 'masked' with `order.reveal='mar'` (MAR's cosine
count of tokens left masked after step k of K, floor(N cos(pi/2 (k+1)/K)), in a random order per
row; arjax.orders.masked) calls `grid_dist`; MAR's linear CFG is `eval.cfg_schedule='linear'`
with `eval.cfg_by='revealed'` (scale 1 + (w - 1) (N - masked after the step) / N).

Dropout: MAR's timm blocks drop attention probabilities and projections at 0.1; here the
backbone's `resid_dropout` / `ffn_dropout` stand for both (no attention-probability dropout).

Legend: B batch, N tokens, C token channels, P buffer slots, D encoder width, Dd decoder width.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from arjax.heads.base import (build_head, check_targets, continuous_token_dim, head_is_continuous,
                              head_node, token_metrics)
from arjax.kernels.masks import MaskSpec
from arjax.models.registry import MODELS, GeneratorFields, model_fields
from arjax.nn.layers import Dense, Embed, LayerNorm, make_param
from arjax.nn.transformer import Transformer, TransformerConfig
from arjax.orders import build_order
from arjax.orders.schedules import mar_mask_ratio, mar_num_masked
from arjax.tokenizers import build_tokenizer


@dataclasses.dataclass(frozen=True)
class MARFields(GeneratorFields):
  """`config.model` of 'mar'. `model.backbone` is the encoder (TransformerConfig: MAR's ViT
  blocks are norm='layernorm', mlp='gelu', bias=True, norm_eps=1e-6, position='none'); the
  decoder is the same block with its own depth, width and heads."""
  buffer_size: int = 64           # P slots holding the class embedding (MAR: 64).
  decoder_layers: int = 2         # decoder depth (MAR-B 12, L 16, H 20).
  decoder_dim: int = 0            # Dd (0: the encoder's width).
  decoder_heads: int = 0          # decoder heads (0: the encoder's).
  mask_ratio_min: float = 0.7     # training mask ratio ~ truncated normal on [this, 1].
  mask_ratio_std: float = 0.25    # its standard deviation (mean 1).

  def __post_init__(self):
    if isinstance(self.buffer_size, bool) or not isinstance(self.buffer_size, int) or \
        self.buffer_size < 1:
      raise ValueError(f"model.buffer_size={self.buffer_size!r}; expected an integer >= 1 (the "
                       "slots holding the class embedding; MAR: 64)")
    for name in ("decoder_layers",):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"model.{name}={v!r}; expected an integer >= 1")
    for name in ("decoder_dim", "decoder_heads"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"model.{name}={v!r}; expected an integer >= 0 (0: the encoder's)")
    lo = self.mask_ratio_min
    if not (isinstance(lo, (int, float)) and 0.0 <= lo < 1.0):
      raise ValueError(f"model.mask_ratio_min={lo!r}; expected a number in [0, 1) (MAR: 0.7)")
    sd = self.mask_ratio_std
    if not (isinstance(sd, (int, float)) and math.isfinite(sd) and sd > 0):
      raise ValueError(f"model.mask_ratio_std={sd!r}; expected a finite number > 0 (MAR: 0.25)")
    if self.token_dropout:
      raise ValueError(f"model.token_dropout={self.token_dropout!r}: MAR has no input token "
                       "dropout; use model.backbone.resid_dropout / ffn_dropout")


def decoder_config(enc: TransformerConfig, m: MARFields) -> TransformerConfig:
  """The decoder's blocks: the encoder's options with the decoder's depth, width and heads."""
  dim = m.decoder_dim or enc.dim
  heads = m.decoder_heads or enc.num_heads
  mlp_dim = None if dim != enc.dim else enc.mlp_dim
  cfg = dataclasses.replace(enc, num_layers=m.decoder_layers, dim=dim, num_heads=heads,
                            num_kv_heads=None, mlp_dim=mlp_dim, max_positions=enc.max_positions)
  cfg.validate()
  return cfg


class MAR(nnx.Module):

  FIELDS = MARFields  # a subclass (arjax.models.far) reads its own, wider fields.

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = model_fields(self.FIELDS, config)
    self.tokenizer = build_tokenizer(config)
    self.order = build_order(config, self.tokenizer)
    if not head_is_continuous(config):
      raise ValueError(f"model 'mar' models continuous tokens: model.head.name="
                       f"{head_node(config)['name']!r} is discrete; use one of 'diffusion', "
                       "'flow', 'gmm'")
    self.head_name = head_node(config)["name"]
    if getattr(self.order, "confidence", False):
      raise ValueError(f"order {self.order.name!r} reveals by confidence, which continuous head "
                       f"{self.head_name!r} has none of: use order.reveal='mar' (MAR's random "
                       "order with the cosine count)")
    c = continuous_token_dim(self.tokenizer, head=self.head_name)
    enc = TransformerConfig.from_config(config.model.backbone)
    if enc.position != "none":
      raise ValueError(f"model 'mar' adds its own learned positions: model.backbone.position="
                       f"{enc.position!r}; expected 'none'")
    dec = decoder_config(enc, m)
    self.enc_cfg, self.dec_cfg = enc, dec
    n, p = self.tokenizer.tokens_per_image, m.buffer_size
    self.num_tokens, self.buffer_size, self.channels = n, p, c
    self.num_classes, self.null_class = m.num_classes, m.num_classes
    self.class_dropout = m.class_dropout
    self.mask_ratio_min, self.mask_ratio_std = m.mask_ratio_min, m.mask_ratio_std
    dt = enc.compute_dtype
    std = nnx.initializers.normal(stddev=0.02)
    xavier = nnx.initializers.xavier_uniform()
    d, dd = enc.dim, dec.dim
    # Row num_classes is MAR's fake_latent (the unconditional embedding for CFG).
    self.class_embed = Embed(m.num_classes + 1, d, rngs=rngs, axes=(None, "embed"), dtype=dt)
    self.z_proj = Dense(c, d, axes=(None, "embed"), rngs=rngs, dtype=dt, use_bias=True,
                        init=xavier)
    self.z_proj_ln = LayerNorm(d, rngs=rngs, eps=1e-6)
    self.encoder_pos = make_param(rngs, std, (p + n, d), (None, "embed"))
    self.encoder = Transformer(enc, rngs=rngs)
    self.decoder_embed = Dense(d, dd, axes=("embed", None), rngs=rngs, dtype=dt, use_bias=True,
                               init=xavier)
    self.mask_token = make_param(rngs, std, (dd,), ("embed",))
    self.decoder_pos = make_param(rngs, std, (p + n, dd), (None, "embed"))
    self.decoder = Transformer(dec, rngs=rngs)
    self.diffusion_pos = make_param(rngs, std, (n, dd), (None, "embed"))
    self.head = build_head(config, dd, self.tokenizer, rngs=rngs, dtype=dt)
    self.rngs = rngs

  # -- the encoder-decoder ----------------------------------------------------------------------
  def condition(self, tokens, labels, masked, *, train: bool = False):
    """tokens float [B, N, C] (values at masked cells are ignored), labels int32 [B] (the null
    class num_classes for the unconditional half), masked bool [B, N] -> z float32 [B, N, Dd]."""
    b, n = masked.shape
    p = self.buffer_size
    x = self.z_proj(tokens.astype(jnp.float32)).astype(jnp.float32)
    cls = self.class_embed(labels).astype(jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls[:, None], (b, p, x.shape[-1])), x], 1)
    x = self.z_proj_ln(x + self.encoder_pos[...])
    visible = jnp.concatenate([jnp.ones((b, p), bool), ~masked], 1)
    seg = visible.astype(jnp.int32)
    # Visible queries see only visible keys: MAR's encoder over the kept tokens. Masked queries
    # see only masked keys; their outputs are replaced by the [MASK] vector below.
    enc_mask = MaskSpec(kind="bidirectional", q_segment_ids=seg, kv_segment_ids=seg)
    zeros = jnp.zeros((b, p + n), jnp.int32)
    h, _ = self.encoder(x, positions=zeros, mask=enc_mask, deterministic=not train)
    y = self.decoder_embed(h).astype(jnp.float32)
    y = jnp.where(visible[..., None], y, self.mask_token[...].astype(jnp.float32))
    y = y + self.decoder_pos[...]
    y, _ = self.decoder(y, positions=zeros, mask=MaskSpec(kind="bidirectional"),
                        deterministic=not train)
    return y[:, p:] + self.diffusion_pos[...]

  def forward(self, tokens, labels, masked, *, train: bool = False):
    """-> the head's Distribution over [B, N]."""
    return self.head(self.condition(tokens, labels, masked, train=train))

  # -- training ---------------------------------------------------------------------------------
  def batch_tokens(self, batch):
    """The targets of a batch: cached continuous latents, or encoded images."""
    for key in ("latents", "tokens"):
      if key in batch:
        return batch[key]
    return self.tokenizer.encode(batch["image"])

  def train_mask(self, key, batch: int):
    """bool [B, N]: ceil(N r) cells per row in a random order, r ~ MAR's truncated normal (one
    ratio per batch, as MAR's random_masking)."""
    k_ratio, k_order = jax.random.split(key)
    ratio = mar_mask_ratio(k_ratio, (), self.mask_ratio_min, self.mask_ratio_std)
    num = mar_num_masked(ratio, self.num_tokens)
    rank = jnp.argsort(jax.random.uniform(k_order, (batch, self.num_tokens)), 1).argsort(1)
    return rank < num

  def checked_tokens(self, batch: Dict[str, jax.Array]) -> jax.Array:
    """The batch's latents [B, N, C]; the wrong channel count fails in one line naming both
    shapes."""
    tokens = self.batch_tokens(batch)
    check_targets(tokens, self.head.token_shape, jnp.float32, (tokens.shape[0], self.num_tokens),
                  self.head_name)
    return tokens

  def drop_labels(self, labels: jax.Array, train: bool) -> jax.Array:
    """labels int32 [B] with each replaced by the null class with probability class_dropout in
    training (the unconditional branch CFG needs)."""
    if train and self.class_dropout > 0:
      keep = jax.random.uniform(self.rngs.dropout(), labels.shape) >= self.class_dropout
      return jnp.where(keep, labels, self.null_class)
    return labels

  def loss(self, batch: Dict[str, jax.Array], *, train: bool
           ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    tokens = self.checked_tokens(batch)
    b = tokens.shape[0]
    labels = self.drop_labels(batch["label"].astype(jnp.int32), train)
    # Evaluation masks and draws the head's noise from fixed keys: a deterministic test loss.
    k_mask, k_head = jax.random.split(self.rngs.sample() if train else jax.random.key(0))
    masked = self.train_mask(k_mask, b)
    dist = self.forward(tokens, labels, masked, train=train)
    w = masked.astype(jnp.float32)
    if "mask" in batch:  # padded evaluation batches
      w = w * batch["mask"][:, None].astype(jnp.float32)
    loss, per_token = dist.loss(tokens.astype(jnp.float32), key=k_head, weights=w)
    metrics = token_metrics(dist, loss, per_token, tokens, w)
    metrics["mask_ratio"] = masked.astype(jnp.float32).mean()
    return loss, metrics

  # -- sampling ---------------------------------------------------------------------------------
  def grid_dist(self, tokens, labels, known, plan):
    """Distribution [B, N] of every cell given the known ones (the 'order' sampler's protocol)."""
    del plan
    return self.forward(tokens, labels, ~known)

  def default_sampler(self) -> str:
    return "order"


@MODELS.register("mar", fields=MARFields)
def _build(config, *, rngs):
  return MAR(config, rngs=rngs)
