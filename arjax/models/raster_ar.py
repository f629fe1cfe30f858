"""Class-conditional next-token generator (LlamaGen, Sun et al. 2024; the raster AR baseline).

Sequence [class token, x_0 ... x_{N-2}] predicts x_0 ... x_{N-1}. During training the class is
replaced by a null class with probability `class_dropout`, which classifier-free guidance uses
at sampling time. Tokenizer, order, backbone and head are parts named by the config.

Legend: B batch, N tokens per image, D width, V vocabulary, T tokens fed in one decode call.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from arjax.heads.categorical import HEADS
from arjax.models.registry import MODELS
from arjax.nn.layers import Embed
from arjax.nn.transformer import Transformer, TransformerConfig
from arjax.orders import build_order
from arjax.registry import read_fields
from arjax.tokenizers import build_tokenizer


@dataclasses.dataclass(frozen=True)
class GeneratorFields:
  """`config.model` of the class-conditional generators (raster_ar; ordered_ar adds its own).
  Sub-node `model.backbone`: the fields of TransformerConfig."""
  SUBNODES = {"backbone": TransformerConfig}
  num_classes: int = 10           # class-conditional; index num_classes is the null class.
  class_dropout: float = 0.1      # probability of the null class in training (for CFG).
  token_dropout: float = 0.0      # dropout on input embeddings.
  head: str = "categorical"       # registry name in arjax.heads.
  label_smoothing: float = 0.0    # cross-entropy label smoothing.


def model_fields(fields_cls, config):
  """The fields the model `config.model.name` declares (`fields_cls`), read from config.model."""
  m = config.model
  return read_fields(fields_cls, m, f"model {m.name!r} (config.model)")


class RasterAR(nnx.Module):

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = model_fields(GeneratorFields, config)
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
    self.token_embed = Embed(self.tokenizer.vocab_size, dim, rngs=rngs, dtype=dt)
    self.backbone = Transformer(self.backbone_cfg, rngs=rngs)
    self.head = HEADS.get(m.head, field="model.head")(dim, self.tokenizer.vocab_size, rngs=rngs,
                                                      dtype=dt,
                                                      label_smoothing=m.label_smoothing)
    self.drop = nnx.Dropout(m.token_dropout, rngs=rngs) if m.token_dropout > 0 else None
    self.rngs = rngs

  # -- training ---------------------------------------------------------------------------------
  def logits(self, tokens, labels, *, train: bool = False):
    """tokens int32 [B, N], labels int32 [B] -> logits float32 [B, N, V]."""
    b = tokens.shape[0]
    x = jnp.concatenate([self.class_embed(labels)[:, None], self.token_embed(tokens[:, :-1])], 1)
    if self.drop is not None:
      x = self.drop(x, deterministic=not train)
    h, _ = self.backbone(x, positions=self.order.input_positions(b),
                         mask=self.order.train_mask(), deterministic=not train)
    return self.head(h)

  def drop_labels(self, labels):
    keep = jax.random.uniform(self.rngs.dropout(), labels.shape) >= self.class_dropout
    return jnp.where(keep, labels, self.null_class)

  def loss(self, batch: Dict[str, jax.Array], *, train: bool
           ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    tokens = batch["tokens"] if "tokens" in batch else self.tokenizer.encode(batch["image"])
    labels = batch["label"].astype(jnp.int32)
    if train and self.class_dropout > 0:
      labels = self.drop_labels(labels)
    logits = self.logits(tokens, labels, train=train)
    weights = None
    if "mask" in batch:  # padded evaluation batches
      weights = jnp.broadcast_to(batch["mask"][:, None], tokens.shape).astype(jnp.float32)
    loss, nll = self.head.loss(logits, tokens, weights)
    w = jnp.ones_like(nll) if weights is None else weights
    denom = jnp.maximum(w.sum(), 1.0)
    nll_mean = (nll * w).sum() / denom
    acc = ((jnp.argmax(logits, -1) == tokens) * w).sum() / denom
    return loss, {"loss": loss, "nll": nll_mean, "bits_per_dim": nll_mean / jnp.log(2.0),
                  "accuracy": acc, "num_tokens": w.sum()}

  # -- decoding ---------------------------------------------------------------------------------
  def init_cache(self, batch: int):
    return self.backbone.init_cache(batch, self.tokenizer.tokens_per_image)

  def decode_prefix(self, labels, caches):
    """Feeds the class token at cache slot 0. Returns (logits [B, V] for x_0, caches)."""
    x = self.class_embed(labels)[:, None]
    pos = -jnp.ones((labels.shape[0], 1, 2), jnp.int32)
    h, caches = self.backbone(x, positions=pos, mask=self.order.decode_mask(0, 1),
                              caches=caches, cache_index=0)
    return self.head(h)[:, -1], caches

  def decode_tokens(self, tokens, token_index, caches):
    """Feeds tokens int32 [B, T] = x_i ... x_{i+T-1} (i = token_index, cache slots i+1 ...).

    token_index: a scalar, or int32 [B] when rows have been fed different numbers of tokens.
    Returns (logits [B, T, V] predicting x_{i+1} ... x_{i+T}, caches).
    """
    b, t = tokens.shape
    token_index = jnp.asarray(token_index, jnp.int32)
    pos = jax.vmap(lambda i: jax.lax.dynamic_slice_in_dim(self.order.grid_positions, i, t, 0))(
        jnp.broadcast_to(token_index, (b,)))
    slot = token_index + 1
    h, caches = self.backbone(self.token_embed(tokens), positions=pos,
                              mask=self.order.decode_mask(slot, t), caches=caches,
                              cache_index=slot)
    return self.head(h), caches


@MODELS.register("raster_ar", fields=GeneratorFields)
def _build(config, *, rngs):
  return RasterAR(config, rngs=rngs)
