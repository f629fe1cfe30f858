"""One class-conditional generator for every order whose slots one transformer reads.

The order (`arjax.orders`) says what each slot carries and predicts; this model only embeds
slots, runs the shared `Transformer` under the order's mask and scores the targets. With it a
paper is a config:

  RAR (Yu et al. 2024)        order 'random' with annealing, learned + target-aware position
                              tables, a start token, adaLN on class + per-slot embedding, QK-norm.
  RandAR (Pang et al. 2025)   order 'randar', 2D RoPE, one learned position-instruction vector.
  LPD (Zhang et al. 2025)     order 'lpd', learned positions, a learned [MASK] query, ViT blocks,
                              LayerNorm on the inputs.
  PAR (Wang et al. 2025)      order 'par', 2D RoPE, learned transition query.
  MaskGIT / MaskGIL           order 'masked', bidirectional, a learned [MASK] embedding.

Slot embedding: token embedding of the cell it carries (for a continuous head, a Dense
projection of its latent [C], as raster_ar's GIVT input), or the class (null class with
probability `class_dropout`), or a learned query vector, or a learned start token; plus, when
enabled, pos_table[pos] and target_table[tgt] (RAR's target-aware embedding). Predictions are
head Distributions (arjax.heads.base). Sampling: the `grid_dist` of a sampling step feeds the
'order' sampler (arjax.sampling.orders); causal orders without queries also have KV-cached
raster decoding (`decode_prefix` / `decode_tokens`, the 'sequential' sampler's protocol), which
is how RAR samples after annealing. Continuous heads (diffusion, flow, gmm, arinar) take
latents [B, N, C] (batch['latents']) and run on every sampler above: the tokens are the head's
(`head.token_shape` / `token_dtype`) throughout; 'arpg', 'nar' and 'ardm' take discrete tokens
only.

Legend: B batch, N tokens, L slots, P start slots, D width, V vocabulary, C latent channels,
T tokens per call.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from arjax.heads.base import (build_head, check_targets, continuous_token_dim, head_is_continuous,
                              head_node, token_metrics)
from arjax.kernels.masks import MaskSpec
from arjax.models.registry import MODELS, GeneratorFields, model_fields
from arjax.nn.layers import AdaLNModulation, Dense, Embed, LayerNorm, modulate, make_param
from arjax.nn.transformer import Transformer, TransformerConfig
from arjax.orders import SRC_CLASS, SRC_QUERY, SRC_START, build_order, register_support
from arjax.orders.base import Layout
from arjax.orders.cache_plan import rank_space, read_slots_from_targets
from arjax.tokenizers import build_tokenizer

register_support("raster_ar", orders=("raster",))  # RasterAR reads RasterOrder's own API.
register_support("ordered_ar", mask_kinds=("causal", "bidirectional", "block"))

@dataclasses.dataclass(frozen=True)
class OrderedFields(GeneratorFields):
  """`config.model` of 'ordered_ar' (and of 'arpg' and 'nar', built on it)."""
  learned_pos: bool = False       # add a learned table indexed by the slot's grid cell.
  target_aware: bool = False      # RAR: add a second table indexed by the cell the slot predicts.
  start_token: bool = False       # RAR: a learned [cls] slot before the class token.
  timestep_cond: bool = False     # RAR: adaLN condition = class embedding + per-slot embedding.
  final_adaln: bool = False       # RAR: adaLN (shift, scale) before the head.
  pos_table_extra: int = 0        # extra rows of the position tables (RAR's released layout: 1024).
  slot_table_extra: int = 0       # extra rows of the per-slot table (RAR: 100).
  input_norm: bool = False        # LPD: LayerNorm on the slot embeddings (its `z_proj_ln`).


def gather_cells(x, idx):
  """x [B, N, ...], idx int [B, L] (-1 allowed) -> [B, L, ...] (rows of -1 are row 0)."""
  idx = jnp.maximum(idx, 0)
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def scatter_to_grid(values, tgt, n: int):
  """values [B, L, ...] at slots predicting cells tgt [B, L] -> [B, N, ...] (0 elsewhere)."""
  b = values.shape[0]
  cells = jnp.where(tgt >= 0, tgt, n)  # out of range: dropped
  out = jnp.zeros((b, n) + values.shape[2:], values.dtype)
  return out.at[jnp.arange(b)[:, None], cells].set(values, mode="drop")


class OrderedAR(nnx.Module):
  # Whether every prediction has its own query at the target's position (ARPG's subclass), so a
  # random order may be sampled in parallel groups.
  target_queries = False
  # Whether a continuous head may replace the token embedding (subclasses whose decoder or
  # sampler reads discrete tokens, ARPG's, NAR's and ARDM's, set False).
  takes_continuous = True

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = model_fields(OrderedFields, config)
    self.config_name = config.model.name
    self.tokenizer = build_tokenizer(config)
    self.order = build_order(config, self.tokenizer)
    self.backbone_cfg = TransformerConfig.from_config(config.model.backbone)
    cfg = self.backbone_cfg
    dim, dt = cfg.dim, cfg.compute_dtype
    n = self.tokenizer.tokens_per_image
    self.num_tokens = n
    self.num_classes, self.null_class = m.num_classes, m.num_classes
    self.class_dropout = m.class_dropout
    self.learned_pos = m.learned_pos
    self.target_aware = m.target_aware
    self.start_slots = 1 if m.start_token else 0
    self.timestep_cond = m.timestep_cond
    if self.timestep_cond and not cfg.adaln:
      raise ValueError("model.timestep_cond=True conditions adaLN: set model.backbone.adaln=True")
    if cfg.adaln and not self.timestep_cond:
      raise ValueError("model.backbone.adaln=True needs model.timestep_cond=True in ordered_ar "
                       "(the adaLN condition is class + per-slot embedding)")
    if cfg.position == "learned":
      raise ValueError("ordered_ar: use model.learned_pos=True with backbone.position='none' "
                       "(the backbone's learned table would index by row only)")
    from arjax.orders.random import RandomOrder
    if (isinstance(self.order, RandomOrder) and self.order.max_group > 1
        and not self.target_queries):
      raise ValueError(f"order {self.order.name!r} with parallel groups (order.schedule="
                       f"{self.order.schedule!r}) needs separate target queries: use model "
                       "'arpg' or order 'randar'")
    self.continuous = head_is_continuous(config)
    self.head_name = head_node(config)["name"]
    if self.continuous and not self.takes_continuous:
      raise ValueError(f"model {config.model.name!r} embeds discrete tokens: model.head.name="
                       f"{self.head_name!r} (continuous tokens) runs on model 'ordered_ar' or "
                       "'raster_ar'")
    self.class_embed = Embed(m.num_classes + 1, dim, rngs=rngs, axes=(None, "embed"), dtype=dt)
    if self.continuous:  # GIVT: a Dense projection of each continuous token (raster_ar's).
      c = continuous_token_dim(self.tokenizer, head=self.head_name)
      self.token_proj = Dense(c, dim, axes=(None, "embed"), rngs=rngs, dtype=dt)
    else:
      self.token_embed = Embed(self.tokenizer.vocab_size, dim, rngs=rngs, dtype=dt)
    init = nnx.initializers.normal(stddev=0.02)
    self.query = make_param(rngs, init, (dim,), ("embed",))
    self.start = make_param(rngs, init, (dim,), ("embed",)) if self.start_slots else None
    rows = n + m.pos_table_extra
    self.pos_table = (Embed(rows, dim, rngs=rngs, axes=(None, "embed"), dtype=dt)
                      if self.learned_pos else None)
    self.target_table = (Embed(rows, dim, rngs=rngs, axes=(None, "embed"), dtype=dt)
                         if self.target_aware else None)
    self.max_slots = self._max_slots() + self.start_slots
    self.slot_table = (Embed(self.max_slots + m.slot_table_extra, dim, rngs=rngs,
                             axes=(None, "embed"), dtype=dt) if self.timestep_cond else None)
    self.backbone = Transformer(cfg, rngs=rngs)
    self.final_ada = (AdaLNModulation(dim, dim, 2, rngs=rngs, dtype=dt, use_bias=cfg.bias)
                      if m.final_adaln else None)
    self.input_norm = (LayerNorm(dim, rngs=rngs, eps=cfg.norm_eps)
                       if m.input_norm else None)
    self.head = build_head(config, dim, self.tokenizer, rngs=rngs, dtype=dt)
    self.drop = nnx.Dropout(m.token_dropout, rngs=rngs) if m.token_dropout > 0 else None
    self.rngs = rngs

  def _max_slots(self) -> int:
    shape = jax.eval_shape(lambda: self.order.train_layout(jax.random.key(0), 1, 0, True))
    return shape.src.shape[1]

  # -- forward ---------------------------------------------------------------------------------
  def rope_positions(self, pos):
    """Grid cells pos [B, L] (-1: none) -> the backbone's positions: (row, col) [B, L, 2], or
    for 'rope1d' the raster index [B, L] (MaskGIL's released code)."""
    if self.backbone_cfg.position == "rope1d":
      return pos
    grid = self.order.grid_positions
    return jnp.where((pos >= 0)[..., None], grid[jnp.maximum(pos, 0)], -1)

  def embed_tokens(self, slot_tokens):
    """slot_tokens int32 [B, L] (-1 allowed) or float [B, L, C] (continuous) -> [B, L, D]."""
    if self.continuous:
      return self.token_proj(slot_tokens.astype(jnp.float32))
    return self.token_embed(jnp.maximum(slot_tokens, 0))

  def embed_slots(self, tokens, labels, layout: Layout):
    """tokens [B, N(, C)] -> x [B, L, D], rope positions [B, L, 2] (or [B, L]), adaLN cond
    [B, L, D] or None."""
    return self.embed_sources(gather_cells(tokens, layout.src), labels, layout.src, layout.pos,
                              layout.tgt)

  def embed_sources(self, slot_tokens, labels, src, pos, tgt, slot0=0):
    """The slot embedding of `embed_slots` for slots whose tokens are already gathered:
    slot_tokens int32 [B, L] or float [B, L, C] (read where src >= 0), slots numbered slot0 ...
    slot0 + L - 1 (the KV-cached decode feeds a few slots at a cache offset)."""
    tok = self.embed_tokens(slot_tokens)
    cls = self.class_embed(labels)[:, None]
    x = jnp.where((src >= 0)[..., None], tok, 0)
    x = x + jnp.where((src == SRC_CLASS)[..., None], cls, 0)
    x = x + jnp.where((src == SRC_QUERY)[..., None], self.query[...].astype(x.dtype), 0)
    if self.start is not None:
      x = x + jnp.where((src == SRC_START)[..., None], self.start[...].astype(x.dtype), 0)
    if self.pos_table is not None:
      x = x + self.pos_table(jnp.maximum(pos, 0)) * (pos >= 0)[..., None]
    if self.target_table is not None:
      x = x + self.target_table(jnp.maximum(tgt, 0)) * (tgt >= 0)[..., None]
    if self.input_norm is not None:
      x = self.input_norm(x)
    rope_pos = self.rope_positions(pos)
    cond = None
    if self.slot_table is not None:
      # slot0: a scalar, or int32 [B] when rows decode at different cache offsets.
      slot0 = jnp.asarray(slot0, jnp.int32)
      slots = (slot0[..., None] if slot0.ndim else slot0) + jnp.arange(src.shape[1])
      cond = cls + (self.slot_table(slots) if slots.ndim == 2 else self.slot_table(slots)[None])
    return x, rope_pos, cond

  def layout_logits(self, tokens, labels, layout: Layout, **kw):
    """Categorical shortcut of `layout_dist`: (logits float32 [B, L, V], layout)."""
    dist, layout = self.layout_dist(tokens, labels, layout, **kw)
    return dist.logits, layout

  def layout_dist(self, tokens, labels, layout: Layout, *, train: bool = False):
    """tokens int32 [B, N] (or float [B, N, C]), labels [B], a layout of L slots ->
    (Distribution [B, L], layout)."""
    if self.continuous:  # latents of the wrong channel count: one line naming both shapes.
      check_targets(tokens, self.head.token_shape, jnp.float32, tokens.shape[:2], self.head_name)
    layout = layout.prepend(self.start_slots)  # orders' layouts never hold start slots.
    x, rope_pos, cond = self.embed_slots(tokens, labels, layout)
    if self.drop is not None:
      x = self.drop(x, deterministic=not train)
    h, _ = self.backbone(x, positions=rope_pos, mask=layout.mask, cond=cond,
                         deterministic=not train)
    if self.final_ada is not None:
      shift, scale = self.final_ada(cond)
      h = modulate(h, shift, scale)
    return self.head(h), layout

  def drop_labels(self, labels):
    keep = jax.random.uniform(self.rngs.dropout(), labels.shape) >= self.class_dropout
    return jnp.where(keep, labels, self.null_class)

  def tokens_and_labels(self, batch: Dict[str, jax.Array], train: bool):
    """(tokens int32 [B, N] or latents float [B, N, C], labels int32 [B]) of a batch: cached
    tokens, cached continuous latents or encoded images; labels dropped to the null class at
    rate class_dropout when training (classifier-free guidance)."""
    for name in ("tokens", "latents"):
      if name in batch:
        tokens = batch[name]
        break
    else:
      tokens = self.tokenizer.encode(batch["image"])
    labels = batch["label"].astype(jnp.int32)
    if train and self.class_dropout > 0:
      labels = self.drop_labels(labels)
    return tokens, labels

  def weighted_loss(self, batch, dist, targets, w, cells=None, key=None):
    """(loss, metrics) of a Distribution [B, T] against targets [B, T] with weights w [B, T]
    (padded evaluation rows, batch['mask'], weigh zero). cells: int32 [B, T], the grid cell of
    each target (None: target t is cell t), to read batch['token_mask'] [B, N] of text data.
    key: the noise of heads whose loss draws it (diffusion, flow)."""
    if "mask" in batch:  # padded evaluation batches
      w = w * batch["mask"][:, None].astype(jnp.float32)
    if "token_mask" in batch:  # text sources: the tokens scored, gathered to the targets' cells
      tm = batch["token_mask"].astype(jnp.float32)
      w = w * (tm if cells is None else gather_cells(tm, cells))
    # Heads whose loss draws noise (diffusion, flow) take a key; the others ignore it.
    loss, per_token = dist.loss(targets, key=key, weights=w)
    return loss, token_metrics(dist, loss, per_token, targets, w)

  def loss(self, batch: Dict[str, jax.Array], *, train: bool
           ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    tokens, labels = self.tokens_and_labels(batch, train)
    # Evaluation draws its order from a fixed key, so the test NLL is deterministic.
    key = self.rngs.sample() if train else jax.random.key(0)
    layout = self.order.train_layout(key, tokens.shape[0], batch.get("step"), train)
    dist, layout = self.layout_dist(tokens, labels, layout, train=train)
    # As raster_ar: a continuous head's loss noise from a fresh key in training, a fixed one in
    # evaluation (discrete heads draw none, so their seeded training is unchanged).
    loss_key = None
    if self.continuous:
      loss_key = self.rngs.sample() if train else jax.random.key(0)
    loss, metrics = self.weighted_loss(batch, dist, gather_cells(tokens, layout.tgt),
                                       (layout.tgt >= 0).astype(jnp.float32), layout.tgt,
                                       key=loss_key)
    if hasattr(self.order, "random_ratio") and self.order.anneals:
      metrics["random_ratio"] = self.order.random_ratio(batch.get("step"), train)
    return loss, metrics

  # -- sampling --------------------------------------------------------------------------------
  def grid_dist(self, tokens, labels, known, plan):
    """Distribution [B, N] of every cell predicted by a sampling step's layout (the 'order'
    sampler's protocol; cells the step does not predict hold zeros)."""
    layout = self.order.sample_layout(plan, known)
    dist, layout = self.layout_dist(tokens, labels, layout)
    return jax.tree.map(lambda x: scatter_to_grid(x, layout.tgt, self.num_tokens), dist)

  def default_sampler(self) -> str:
    """The sampler of this model's order: KV-cached sequential decoding for orders sampled
    cell by cell in raster order, KV-cached slot decoding ('cached_order') for the other
    fixed-group orders (RandAR, LPD, PAR), else the recomputing order sampler (masked orders,
    whose bidirectional model has nothing to cache)."""
    o = self.order
    raster = o.name == "raster" or (o.name == "random" and not getattr(o, "sample_random", True))
    if raster and self.supports_cached_raster:
      return "sequential"
    return "cached_order" if self.cached_order_support() is None else "order"

  # -- KV-cached sampling of fixed-group orders ('cached_order', arjax.sampling.cached_orders) --
  # The sampler feeds, at each step, the slots of the order's layout that arjax.orders.cache_plan
  # schedules (kept slots enter the cache; a step's queries are fed after them and overwritten).

  def cached_order_support(self):
    """None when the 'cached_order' sampler can run this model, else why not."""
    if self.order.confidence or not self.order.causal:
      return (f"order {self.order.name!r} picks its cells by confidence under a bidirectional "
              "mask, so no slot's state is final before the last step (nothing to cache)")
    if self.slot_table is not None:
      return "its adaLN condition depends on the slot index (model.timestep_cond)"
    return None

  def cache_layout(self):
    """The order's sampling layout in rank space, start slots included (numpy):
    (src, pos, tgt int [L], mask bool [L, L], step_of int [N] by rank, read_slots int [N, 2])."""
    order, n = self.order, self.num_tokens
    plan = order.sample_plan(jax.random.key(0), 1)
    layout = order.sample_layout(plan, jnp.ones((1, n), bool)).prepend(self.start_slots)
    perm = np.asarray(plan.perm)[0]
    l = layout.num_slots
    mask = np.asarray(layout.mask.materialize(1, l, l))[0, 0]
    src, pos, tgt = (rank_space(np.asarray(x)[0], perm) for x in (layout.src, layout.pos,
                                                                   layout.tgt))
    step_of = np.asarray(plan.step_of)[0][perm]
    return src, pos, tgt, mask, step_of, self.cache_read_slots(tgt)

  def cache_read_slots(self, tgt_ranks):
    """[N, 2]: the slot whose output predicts rank r (one head: second column -1)."""
    return read_slots_from_targets(tgt_ranks, self.num_tokens)

  def init_slot_cache(self, batch: int, length: int):
    return self.backbone.init_cache(batch, length)

  def decode_slots(self, slot_tokens, labels, src, pos, tgt, mask, cache, cache_index):
    """Feeds slots (src / pos / tgt int32 [B, F] as cells or SRC_*, their tokens [B, F]) at
    cache slots cache_index [B] ... under `mask` over the cache -> (Distribution [B, F], cache)."""
    x, rope_pos, _ = self.embed_sources(slot_tokens, labels, src, pos, tgt)
    h, cache = self.backbone(x, positions=rope_pos, mask=mask, caches=cache,
                             cache_index=cache_index)
    return self.head(h), cache

  def read_targets(self, out, read_a, read_b):
    """The Distribution [B, G] of a step's targets from the fed rows read_a int32 [G]."""
    del read_b  # one head per prediction.
    return jax.tree.map(lambda x: jnp.take(x, jnp.maximum(read_a, 0), axis=1), out)

  # KV-cached raster decoding (the SequentialSampler protocol) for causal orders without queries:
  # slot P-1 is the class, slot P + i carries x_i and predicts x_(i+1).
  @property
  def supports_cached_raster(self) -> bool:
    return self.order.name in ("raster", "random")

  def _check_cached(self):
    if not self.supports_cached_raster:
      raise ValueError(f"KV-cached raster decoding needs order 'raster' or 'random', not "
                       f"{self.order.name!r}; use arjax.sampling.OrderSampler")

  def init_cache(self, batch: int):
    """{'kv': per-layer KV caches, 'labels': int32 [B]} (the adaLN condition needs the class
    at every decode call, and the SequentialSampler protocol passes only the cache)."""
    self._check_cached()
    return {"kv": self.backbone.init_cache(batch, self.num_tokens + self.start_slots),
            "labels": jnp.zeros((batch,), jnp.int32)}

  def _decode(self, x_src, slot0, labels, caches, pos, tgt, src):
    b, t = src.shape
    x, rope_pos, cond = self.embed_sources(x_src, labels, src, pos, tgt, slot0)
    mask = MaskSpec(kind="causal", q_offset=slot0, kv_length=slot0 + t)
    h, kv = self.backbone(x, positions=rope_pos, mask=mask, cond=cond, caches=caches["kv"],
                          cache_index=slot0)
    caches = {"kv": kv, "labels": labels}
    if self.final_ada is not None:
      shift, scale = self.final_ada(cond)
      h = modulate(h, shift, scale)
    return self.head(h), caches

  def decode_prefix(self, labels, caches):
    """Feeds the start slot(s) and the class. Returns (Distribution [B, 1] of x_0, caches)."""
    self._check_cached()
    b, p = labels.shape[0], self.start_slots + 1
    src = jnp.asarray([SRC_START] * self.start_slots + [SRC_CLASS], jnp.int32)[None]
    src = jnp.broadcast_to(src, (b, p))
    tgt = jnp.asarray([-1] * self.start_slots + [0], jnp.int32)[None].repeat(b, 0)
    labels = labels.astype(jnp.int32)
    # No slot here carries a token (src < 0): zeros of the head's token shape and dtype.
    none = jnp.zeros((b, p) + tuple(self.head.token_shape), self.head.token_dtype)
    dist, caches = self._decode(none, 0, labels, caches, -jnp.ones((b, p), jnp.int32), tgt, src)
    return jax.tree.map(lambda x: x[:, -1:], dist), caches

  def decode_tokens(self, tokens, token_index, caches):
    """Feeds x_i ... x_(i+T-1), tokens [B, T(, C)] (i = token_index: a scalar, or int32 [B] when
    rows have been fed different numbers of tokens). Returns (Distribution [B, T], caches)."""
    b, t = tokens.shape[:2]
    token_index = jnp.asarray(token_index, jnp.int32)
    first = token_index[:, None] if token_index.ndim else token_index
    cells = first + jnp.arange(t, dtype=jnp.int32)
    pos = jnp.broadcast_to(cells, (b, t))
    nxt = cells + 1
    tgt = jnp.broadcast_to(jnp.where(nxt < self.num_tokens, nxt, -1), (b, t))
    return self._decode(tokens, token_index + self.start_slots + 1, caches["labels"], caches,
                        pos, tgt, pos)


@MODELS.register("ordered_ar", fields=OrderedFields)
def _build(config, *, rngs):
  return OrderedAR(config, rngs=rngs)
