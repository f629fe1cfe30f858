"""Class-conditional next-token generator (LlamaGen, Sun et al. 2024; the raster AR baseline).

Sequence [class token, x_0 ... x_{N-2}] predicts x_0 ... x_{N-1}. During training the class is
replaced by a null class with probability `class_dropout`, which classifier-free guidance uses
at sampling time. Tokenizer, order, backbone and head are parts named by the config.

Tokens are what the head declares (arjax.heads.base): int32 [B, N] through a token embedding for
the categorical head, or continuous float32 [B, N, C] (KL-VAE latents) through a Dense input
projection for a continuous head: the GMM (GIVT-Causal, Tschannen et al. 2023), the diffusion
head (MAR's diffusion loss) or the flow-matching head (NextStep-1 style). Every prediction is a head
Distribution over [B, positions]; `logits` is the categorical shortcut.

Legend: B batch, N tokens per image, D width, V vocabulary, C latent channels, T tokens fed in
one decode call.
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
from arjax.models.registry import MODELS, GeneratorFields, model_fields
from arjax.nn.layers import Dense, Embed
from arjax.nn.transformer import Transformer, TransformerConfig
from arjax.orders import build_order
from arjax.tokenizers import build_tokenizer


@dataclasses.dataclass(frozen=True)
class RasterARFields(GeneratorFields):
  """`config.model` of raster_ar: the generators' fields plus CAM-style noise augmentation of
  continuous context tokens (CAM, arXiv 2411.18447: exposure bias is the known weakness of
  continuous AR; 0 turns each off)."""
  input_noise: float = 0.0        # training: context + sigma eps, sigma ~ U(0, this) per sequence.
  input_noise_eval: float = 0.0   # sampling: generated context + this * eps (a fixed level).

  def __post_init__(self):
    for name in ("input_noise", "input_noise_eval"):
      v = getattr(self, name)
      if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
        raise ValueError(f"model.{name}={v!r}; expected a finite number >= 0")


def context_noise(key, tokens, max_std: float):
  """CAM's training corruption: tokens [B, T, C] + sigma_b eps, sigma_b ~ U(0, max_std) per
  sequence, eps ~ N(0, I)."""
  k_sigma, k_eps = jax.random.split(key)
  sigma = jax.random.uniform(k_sigma, (tokens.shape[0], 1, 1)) * max_std
  return tokens + sigma * jax.random.normal(k_eps, tokens.shape, tokens.dtype)


def decode_noise(tokens, token_index, std: float, seed: int = 0):
  """CAM's inference noise on generated context tokens [B, T, C] fed at token_index (scalar or
  int32 [B]): std * eps, eps drawn from fold_in(fold_in(key(seed), row), position) so that each
  row and position has its own draw and a sampler's repeated calls agree."""
  b, t = tokens.shape[:2]
  index = jnp.broadcast_to(jnp.asarray(token_index, jnp.int32), (b,))

  def row(r, i):
    k = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), r), i)
    return jax.random.normal(k, tokens.shape[1:], tokens.dtype)

  return tokens + std * jax.vmap(row)(jnp.arange(b), index)


class RasterAR(nnx.Module):

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = model_fields(RasterARFields, config)
    self.tokenizer = build_tokenizer(config)
    self.order = build_order(config, self.tokenizer)
    self.backbone_cfg = TransformerConfig.from_config(config.model.backbone)
    dim = self.backbone_cfg.dim
    dt = self.backbone_cfg.compute_dtype
    self.num_classes = m.num_classes
    self.null_class = m.num_classes
    self.class_dropout = m.class_dropout
    self.token_dropout = m.token_dropout
    self.class_embed = Embed(m.num_classes + 1, dim, rngs=rngs, axes=(None, "embed"), dtype=dt)
    # Parameters are created in the same order as before heads returned distributions (token
    # input, backbone, head), so seeded initialisations are unchanged.
    self.continuous = head_is_continuous(config)
    if self.continuous:  # GIVT: a Dense projection of each continuous token.
      self.head_name = head_node(config)["name"]
      c = continuous_token_dim(self.tokenizer, head=self.head_name)
      self.token_proj = Dense(c, dim, axes=(None, "embed"), rngs=rngs, dtype=dt)
    else:
      self.token_embed = Embed(self.tokenizer.vocab_size, dim, rngs=rngs, dtype=dt)
    self.backbone = Transformer(self.backbone_cfg, rngs=rngs)
    self.head = build_head(config, dim, self.tokenizer, rngs=rngs, dtype=dt)
    self.drop = nnx.Dropout(m.token_dropout, rngs=rngs) if m.token_dropout > 0 else None
    if (m.input_noise > 0 or m.input_noise_eval > 0) and not self.continuous:
      raise ValueError(f"model.input_noise={m.input_noise}, model.input_noise_eval="
                       f"{m.input_noise_eval}: noise augmentation applies to continuous tokens, "
                       f"but head {head_node(config)['name']!r} takes discrete ones")
    self.input_noise, self.input_noise_eval = m.input_noise, m.input_noise_eval
    self.rngs = rngs

  # -- training ---------------------------------------------------------------------------------
  def embed_tokens(self, tokens):
    """tokens [B, T] (int) or [B, T, C] (continuous) -> [B, T, D]."""
    if self.continuous:
      return self.token_proj(tokens.astype(jnp.float32))
    return self.token_embed(tokens)

  def forward(self, tokens, labels, *, train: bool = False):
    """tokens [B, N(, C)], labels int32 [B] -> the head's Distribution over [B, N]."""
    b = tokens.shape[0]
    if self.continuous:  # latents of the wrong channel count: one line naming both shapes.
      check_targets(tokens, self.head.token_shape, jnp.float32, tokens.shape[:2], self.head_name)
    context = tokens[:, :-1]
    if train and self.input_noise > 0:  # CAM: random-level noise on the context in training.
      context = context_noise(self.rngs.sample(), context.astype(jnp.float32), self.input_noise)
    x = jnp.concatenate([self.class_embed(labels)[:, None], self.embed_tokens(context)],
                        1)
    if self.drop is not None:
      x = self.drop(x, deterministic=not train)
    h, _ = self.backbone(x, positions=self.order.input_positions(b),
                         mask=self.order.train_mask(), deterministic=not train)
    return self.head(h)

  def logits(self, tokens, labels, *, train: bool = False):
    """tokens int32 [B, N], labels int32 [B] -> logits float32 [B, N, V] (categorical head)."""
    return self.forward(tokens, labels, train=train).logits

  def batch_tokens(self, batch):
    """The targets of a batch: cached tokens, cached continuous latents, or encoded images."""
    for key in ("tokens", "latents"):
      if key in batch:
        return batch[key]
    return self.tokenizer.encode(batch["image"])

  def drop_labels(self, labels):
    keep = jax.random.uniform(self.rngs.dropout(), labels.shape) >= self.class_dropout
    return jnp.where(keep, labels, self.null_class)

  def loss(self, batch: Dict[str, jax.Array], *, train: bool
           ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    tokens = self.batch_tokens(batch)
    labels = batch["label"].astype(jnp.int32)
    if train and self.class_dropout > 0:
      labels = self.drop_labels(labels)
    dist = self.forward(tokens, labels, train=train)
    weights = None
    if "mask" in batch:  # padded evaluation batches
      weights = jnp.broadcast_to(batch["mask"][:, None], tokens.shape[:2]).astype(jnp.float32)
    if "token_mask" in batch:  # text sources: the tokens scored (arjax.data.text)
      tm = batch["token_mask"].astype(jnp.float32)
      weights = tm if weights is None else weights * tm
    # Heads whose loss draws noise (diffusion, flow) take a key; evaluation uses a fixed one so
    # the test loss is deterministic. Other heads ignore it.
    key = self.rngs.sample() if train else jax.random.key(0)
    loss, per_token = dist.loss(tokens, key=key, weights=weights)
    w = jnp.ones_like(per_token) if weights is None else weights
    return loss, token_metrics(dist, loss, per_token, tokens, w)

  # -- decoding ---------------------------------------------------------------------------------
  def init_cache(self, batch: int):
    return self.backbone.init_cache(batch, self.tokenizer.tokens_per_image)

  def decode_prefix(self, labels, caches):
    """Feeds the class token at cache slot 0. Returns (Distribution [B, 1] of x_0, caches)."""
    x = self.class_embed(labels)[:, None]
    pos = -jnp.ones((labels.shape[0], 1, 2), jnp.int32)
    h, caches = self.backbone(x, positions=pos, mask=self.order.decode_mask(0, 1),
                              caches=caches, cache_index=0)
    return self.head(h), caches

  def decode_tokens(self, tokens, token_index, caches):
    """Feeds tokens [B, T(, C)] = x_i ... x_{i+T-1} (i = token_index, cache slots i+1 ...).

    token_index: a scalar, or int32 [B] when rows have been fed different numbers of tokens.
    Returns (Distribution [B, T] predicting x_{i+1} ... x_{i+T}, caches).
    """
    b, t = tokens.shape[:2]
    token_index = jnp.asarray(token_index, jnp.int32)
    pos = jax.vmap(lambda i: jax.lax.dynamic_slice_in_dim(self.order.grid_positions, i, t, 0))(
        jnp.broadcast_to(token_index, (b,)))
    slot = token_index + 1
    if self.input_noise_eval > 0:  # CAM: a small fixed noise level on generated context.
      tokens = decode_noise(tokens.astype(jnp.float32), token_index, self.input_noise_eval)
    h, caches = self.backbone(self.embed_tokens(tokens), positions=pos,
                              mask=self.order.decode_mask(slot, t), caches=caches,
                              cache_index=slot)
    return self.head(h), caches


  def default_sampler(self) -> str:
    return "sequential"


@MODELS.register("raster_ar", fields=RasterARFields)
def _build(config, *, rngs):
  return RasterAR(config, rngs=rngs)
