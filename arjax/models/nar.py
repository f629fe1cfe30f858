"""NAR: next-neighbour AR with two heads (He et al. 2025).

Slots [class, x_0 ... x_(N-1)] in raster order under the proximity mask of order 'nar' (cell
(h, w) sees every cell with h' + w' <= h + w). The main stack's output at a cell feeds head R,
which predicts its right neighbour; one extra block on top of the stack feeds head B, which
predicts its lower neighbour. The logits of cell (h, w) are
  (0, 0): the mean of R and B at the class slot;   row 0: R of the left neighbour;
  column 0: B of the upper neighbour;               elsewhere: the mean of R(left) and B(up).
Sampling generates one anti-diagonal per step (2H - 1 steps), KV-cached by the 'cached_order'
sampler (each diagonal's slots enter the caches once), or recomputed by the 'order' sampler.
Both heads are categorical (their logits are averaged).

Legend: B batch, N = H W tokens, L = N + 1 slots, D width, V vocabulary.
"""
from __future__ import annotations

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax.heads.base import build_head
from arjax.heads.categorical import Categorical
from arjax.models.ordered_ar import OrderedAR, OrderedFields
from arjax.models.registry import MODELS
from arjax.nn.attention import init_cache
from arjax.nn.layers import make_norm
from arjax.nn.transformer import Block
from arjax.orders import register_support
from arjax.orders.base import Layout

register_support("nar", orders=("nar",))


def combine_neighbour_logits(right, below, grid):
  """right, below [B, L, V] (slot 0 the class, slot 1 + i cell i) -> logits [B, N, V]."""
  h, w = grid
  b, _, v = right.shape
  r = right[:, 1:].reshape(b, h, w, v)
  d = below[:, 1:].reshape(b, h, w, v)
  from_left = jnp.roll(r, 1, axis=2)      # [.., i, j] = R at (i, j - 1)
  from_up = jnp.roll(d, 1, axis=1)        # [.., i, j] = B at (i - 1, j)
  rows = jnp.arange(h)[:, None, None]
  cols = jnp.arange(w)[None, :, None]
  out = jnp.where(rows == 0, from_left, jnp.where(cols == 0, from_up, (from_left + from_up) / 2))
  first = (right[:, 0] + below[:, 0]) / 2
  out = out.at[:, 0, 0].set(first)
  return out.reshape(b, h * w, v)


class NAR(OrderedAR):
  takes_continuous = False  # averages its two heads' logits (categorical only).

  def __init__(self, config, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    if self.order.name != "nar":
      raise ValueError(f"model 'nar' needs order.name='nar', got {self.order.name!r}")
    if self.target_table is not None or self.start_slots or self.timestep_cond:
      raise ValueError("model 'nar' does not take target_aware, start_token or timestep_cond")
    cfg = self.backbone_cfg
    self.extra_block = Block(cfg, rngs=rngs)     # the block under head B.
    self.norm_below = make_norm(cfg.norm, cfg.dim, rngs=rngs, eps=cfg.norm_eps)
    self.head_below = build_head(config, cfg.dim, self.tokenizer, rngs=rngs,
                                 dtype=cfg.compute_dtype)
    if not isinstance(self.head_below, type(self.head)) or not hasattr(self.head, "vocab_size"):
      raise ValueError(f"model 'nar' averages the logits of its two heads: it needs "
                       f"model.head.name='categorical', got {config.model.head.name!r}")

  def grid_logits_of_layout(self, tokens, labels, layout: Layout, *, train: bool = False):
    """Categorical shortcut of `grid_dist_of_layout`: logits float32 [B, N, V]."""
    return self.grid_dist_of_layout(tokens, labels, layout, train=train).logits

  def grid_dist_of_layout(self, tokens, labels, layout: Layout, *, train: bool = False
                          ) -> Categorical:
    """tokens int32 [B, N], labels [B] -> Categorical [B, N] of every cell."""
    x, rope_pos, cond = self.embed_slots(tokens, labels, layout)
    if self.drop is not None:
      x = self.drop(x, deterministic=not train)
    bb = self.backbone
    rope = bb.rope_tables(rope_pos)
    x = x.astype(self.backbone_cfg.compute_dtype)
    # run_blocks: the loop or the scan layout (model.backbone.scan_layers), with remat.
    x, _ = bb.run_blocks(x, mask=layout.mask, rope=rope, cond=cond, deterministic=not train)
    right = self.head(bb.norm(x))
    x, _ = self.extra_block(x, mask=layout.mask, rope=rope, cond=cond, deterministic=not train)
    below = self.head_below(self.norm_below(x))
    return right.replace(logits=combine_neighbour_logits(right.logits, below.logits,
                                                         self.order.grid))

  def loss(self, batch: Dict[str, jax.Array], *, train: bool
           ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    tokens, labels = self.tokens_and_labels(batch, train)
    layout = self.order.train_layout(jax.random.key(0), tokens.shape[0], batch.get("step"), train)
    dist = self.grid_dist_of_layout(tokens, labels, layout, train=train)
    return self.weighted_loss(batch, dist, tokens, jnp.ones(tokens.shape, jnp.float32))

  def grid_dist(self, tokens, labels, known, plan):
    """Categorical [B, N] of every cell; the order reveals the step's anti-diagonal."""
    layout = self.order.sample_layout(plan, known)
    return self.grid_dist_of_layout(tokens, labels, layout)

  def default_sampler(self) -> str:
    return "cached_order"

  # -- KV-cached sampling ('cached_order'): step c feeds the anti-diagonal c - 1 (the class at
  # step 0), whose slots see only earlier diagonals, into the main stack's and the extra block's
  # caches; the right / lower heads of those slots predict diagonal c.
  def cache_read_slots(self, tgt_ranks):
    """[N, 2] by rank: the slots whose head R (first) and head B (second) predict the cell,
    as `combine_neighbour_logits` combines them (slot 0 the class, slot 1 + i cell i)."""
    del tgt_ranks  # NAR predicts through its heads, not slot targets.
    h, w = self.order.grid
    perm = np.asarray(self.order.sample_plan(jax.random.key(0), 1).perm)[0]
    out = np.full((self.num_tokens, 2), -1)
    for r, cell in enumerate(perm):
      i, j = divmod(int(cell), w)
      if i == 0 and j == 0:
        out[r] = (0, 0)
      else:
        out[r] = (1 + cell - 1 if j > 0 else -1, 1 + cell - w if i > 0 else -1)
    return out

  def init_slot_cache(self, batch: int, length: int):
    cfg = self.backbone_cfg
    return {"kv": self.backbone.init_cache(batch, length),
            "extra": init_cache(batch, length, cfg.kv_heads, cfg.head_dim, cfg.compute_dtype)}

  def decode_slots(self, slot_tokens, labels, src, pos, tgt, mask, cache, cache_index):
    """The slots' (right, lower) Categoricals [B, F] and the cache (as grid_dist_of_layout)."""
    x, rope_pos, cond = self.embed_sources(slot_tokens, labels, src, pos, tgt)
    bb = self.backbone
    rope = bb.rope_tables(rope_pos)
    x = x.astype(self.backbone_cfg.compute_dtype)
    x, kv = bb.run_blocks(x, mask=mask, rope=rope, cond=cond, caches=cache["kv"],
                          cache_index=cache_index)
    right = self.head(bb.norm(x))
    x, extra = self.extra_block(x, mask=mask, rope=rope, cond=cond, cache=cache["extra"],
                                cache_index=cache_index)
    below = self.head_below(self.norm_below(x))
    return (right, below), {"kv": kv, "extra": extra}

  def read_targets(self, out, read_a, read_b):
    """Categorical [B, G]: the mean of R(read_a) and B(read_b) where both exist, else the one
    that does (combine_neighbour_logits' rule)."""
    right, below = out
    r = jnp.take(right.logits, jnp.maximum(read_a, 0), axis=1)
    d = jnp.take(below.logits, jnp.maximum(read_b, 0), axis=1)
    a, b = (read_a >= 0)[None, :, None], (read_b >= 0)[None, :, None]
    return right.replace(logits=jnp.where(a & b, (r + d) / 2, jnp.where(a, r, d)))


@MODELS.register("nar", fields=OrderedFields)
def _build(config, *, rngs):
  return NAR(config, rngs=rngs)
