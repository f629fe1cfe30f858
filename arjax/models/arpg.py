"""ARPG: randomized parallel decoding with a two-pass decoder (Li et al. 2025).

Pass 1 (content): n/2 causal self-attention Llama blocks over [class, x_pi0 ... x_pi(N-2)]
(order 'arpg'), each token at the 2D RoPE of its own cell; the final hidden state goes
through RMSNorm and ONE K/V projection shared by every Pass-2 layer (K gets the content RoPE).
Pass 2 (queries): n/2 blocks of cross-attention + MLP; the queries are N copies of one learned
[MASK] embedding, the query predicting x_pi_i carries the 2D RoPE of pi_i and sees the class and
x_pi0 ... x_pi(i-1) (the order's causal mask, Lq = Lk = N). Queries never see each other, so a
sampling step can predict any set of targets at once from the known content: the groups of
order 'arpg' (or 'random' with schedule 'arpg_arccos' / 'arpg_cosine') are decoded with a KV
cache by the 'cached_groups' sampler (arjax.sampling.cached_groups; the Pass-1 cache grows by each
step's tokens, as in ARPG's repo), or recomputed per step by the 'order' sampler (there
`Layout.hide_unknown` hides the content slots of cells not generated yet; inpainting).

`model.backbone.num_layers` is the total n (ARPG-L: 24 = 12 + 12).

Legend: B batch, N tokens, L = N slots, D width, H heads, K head dim, V vocabulary.
"""
from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
from flax import nnx

from arjax.kernels.masks import MaskSpec
from arjax.models.ordered_ar import OrderedAR, OrderedFields
from arjax.models.registry import MODELS
from arjax.nn.cross_attention import CrossBlock
from arjax.nn.layers import DenseGeneral, make_norm
from arjax.nn.rope import apply_rope
from arjax.orders import register_support
from arjax.orders.base import Layout

register_support("arpg", orders=("arpg", "random"))


class ARPG(OrderedAR):
  target_queries = True
  takes_continuous = False  # 'cached_groups' and the two-pass decoder read discrete tokens.

  def __init__(self, config, *, rngs: nnx.Rngs):
    n = config.model.backbone.num_layers
    if n < 2 or n % 2:
      raise ValueError(f"model 'arpg' splits model.backbone.num_layers={n} into two equal "
                       "stacks: give an even number >= 2")
    if config.model.backbone.position != "rope2d":
      raise ValueError("model 'arpg' needs model.backbone.position='rope2d' (queries carry the "
                       f"target's 2D RoPE), got {config.model.backbone.position!r}")
    half = copy.deepcopy(config)
    half.model.backbone.num_layers = n // 2     # `self.backbone` is Pass 1.
    super().__init__(half, rngs=rngs)
    if self.start_slots or self.target_table is not None or self.timestep_cond:
      raise ValueError("model 'arpg' does not take start_token, target_aware or timestep_cond")
    if self.order.anneals:
      raise ValueError("model 'arpg' trains on random orders only: drop order.anneal_start/end")
    cfg = self.backbone_cfg
    dt, h, k = cfg.compute_dtype, cfg.num_heads, cfg.head_dim
    kw = dict(rngs=rngs, dtype=dt, use_bias=cfg.bias)
    # The shared K/V: one projection of Pass 1's normed output for all Pass-2 layers.
    self.to_k = DenseGeneral((cfg.dim, h, k), contract=1, axes=("embed", "heads", "kv"), **kw)
    self.to_v = DenseGeneral((cfg.dim, h, k), contract=1, axes=("embed", "heads", "kv"), **kw)
    self.query_blocks = nnx.List([CrossBlock(cfg, rngs=rngs) for _ in range(n // 2)])
    self.out_norm = make_norm(cfg.norm, cfg.dim, rngs=rngs, eps=cfg.norm_eps)

  @property
  def supports_cached_raster(self) -> bool:
    return False  # parallel groups of a random order: 'cached_groups' or 'order'.

  def default_sampler(self) -> str:
    return "cached_groups"

  def cached_order_support(self):
    return "its two-pass decoder caches content only: use the 'cached_groups' sampler"

  def layout_dist(self, tokens, labels, layout: Layout, *, train: bool = False):
    """tokens int32 [B, N], labels [B], a 'random' layout of L = N slots -> (Distribution
    [B, L], layout).

    Slot i of Pass 1 carries the class (i = 0) or x_pi(i-1); query i predicts layout.tgt[i].
    """
    x, rope_pos, _ = self.embed_slots(tokens, labels, layout)
    if self.drop is not None:
      x = self.drop(x, deterministic=not train)
    h, _ = self.backbone(x, positions=rope_pos, mask=layout.mask, deterministic=not train)
    k = apply_rope(self.to_k(h), *self.backbone.rope_tables(rope_pos))
    v = self.to_v(h)
    tgt = layout.tgt
    q_rope = self.backbone.rope_tables(self.rope_positions(tgt))  # the target's 2D RoPE.
    b, l = tgt.shape
    q = jnp.broadcast_to(self.query[...].astype(h.dtype), (b, l, h.shape[-1]))
    for block in self.query_blocks:
      q = block(q, k, v, mask=layout.mask, rope=q_rope, deterministic=not train)
    return self.head(self.out_norm(q)), layout


  # -- KV-cached parallel decoding ('cached_groups' sampler, arjax.sampling.cached_groups) ----------
  # Pass 1 runs once per token: each step appends the previous step's tokens to the Pass-1 KV
  # caches and their shared K/V to one cache; the step's queries read that cache only.

  def init_group_cache(self, batch: int, length: int):
    """{'kv': Pass-1 per-layer caches, 'k', 'v': shared K/V [B, S, H, K]} for S = length slots."""
    cfg = self.backbone_cfg
    shape = (batch, length, cfg.num_heads, cfg.head_dim)
    return {"kv": self.backbone.init_cache(batch, length),
            "k": jnp.zeros(shape, cfg.compute_dtype), "v": jnp.zeros(shape, cfg.compute_dtype)}

  def feed_content(self, tokens, labels, src, cache, slot0):
    """Writes content slots src int32 [B, T] (SRC_CLASS or a cell, carrying tokens [B, N]) at
    cache slots slot0 ... slot0 + T - 1. Returns the cache."""
    b, t = src.shape
    pos = jnp.where(src >= 0, src, -1)
    layout = Layout(src=src, pos=pos, tgt=jnp.full_like(src, -1), mask=MaskSpec(), perm=src)
    x, rope_pos, _ = self.embed_slots(tokens, labels, layout)
    mask = MaskSpec(kind="causal", q_offset=slot0, kv_length=slot0 + t)
    h, kv = self.backbone(x, positions=rope_pos, mask=mask, caches=cache["kv"],
                          cache_index=slot0)
    k = apply_rope(self.to_k(h), *self.backbone.rope_tables(rope_pos))
    v = self.to_v(h)
    zero = jnp.zeros((), jnp.int32)
    at = (zero, jnp.asarray(slot0, jnp.int32), zero, zero)
    return {"kv": kv, "k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), at),
            "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), at)}

  def predict_group(self, cells, cache, kv_length):
    """Queries for target cells int32 [B, G] over the first kv_length cached content slots
    (the class and every token generated so far) -> Distribution [B, G]."""
    b, g = cells.shape
    q_rope = self.backbone.rope_tables(self.rope_positions(cells))
    q = jnp.broadcast_to(self.query[...].astype(self.backbone_cfg.compute_dtype),
                         (b, g, self.backbone_cfg.dim))
    mask = MaskSpec(kind="bidirectional", kv_length=kv_length)
    for block in self.query_blocks:
      q = block(q, cache["k"], cache["v"], mask=mask, rope=q_rope)
    return self.head(self.out_norm(q))


@MODELS.register("arpg", fields=OrderedFields)
def _build(config, *, rngs):
  return ARPG(config, rngs=rngs)
