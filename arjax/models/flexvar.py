"""FlexVAR: next-scale prediction without residual prediction, at any scale list (Jiao et al.
2025, "FlexVAR: Flexible Visual Autoregressive Modeling without Residual Prediction"; the layout
of the released code, jiaosiyu1999/FlexVAR models/flexvar.py and trainer.py).

What changes from VAR (arjax.models.var; the blocks and the head are VAR's):

  targets   scale k's tokens are NN(area(f, s_k)), every scale quantized on its own from the
            latent f (the tokenizer's multi-scale quantizer with `residual=False`);
  inputs    slot of scale k > 1 = Linear(bicubic(e[q_{k-1}], s_k)): the previous scale's code
            vectors upsampled, no running sum; scale 1 = class embedding + pos_start;
  positions one learnable 2D map P [Gp, Gp, C] (Gp = pos_grid, 32; initialised with FlexVAR's
            sin(row) / cos(col) channels), area-interpolated to each scale's side; no level
            embedding, so nothing is tied to a scale's index or count;
  training  a random scale list per step (arjax.orders.scale_lists: FlexVAR's rule; the list
            always ends at the tokenizer grid and holds at most max_tokens tokens), padded to
            L = max_tokens slots so one compiled step serves every list; loss 1/N over the list's
            N tokens;
  sampling  any increasing list starting at the first side, ending at the grid or beyond it up
            to pos_grid (a larger latent), e.g. 13 steps (`sample_with_fhat(..., scales=...)`).

Random lists need the latent f: batch['latent'] [B, G, G, Zq] (the quantizer's input), or
batch['image'] through the frozen tokenizer run's encoder. A batch of cached tokens
(batch['tokens'], the non-residual tokenizer at order.scales) trains at that one list.

Legend: B batch, N tokens, L slots, K scales, C width, V vocabulary, Dv code dim, G grid side,
Gp position map side, s side of a scale.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax.heads.base import token_metrics
from arjax.kernels.masks import MaskSpec
from arjax.models.autoencoder import frozen_autoencoder
from arjax.models.registry import MODELS
from arjax.models.var import VAR, VarFields
from arjax.nn.layers import make_param
from arjax.orders import register_support
from arjax.orders.scale_lists import ScaleListSpec, sample_scale_list, slot_tables
from arjax.orders.scales import ScaleOrder, check_scales
from arjax.registry import ranged
from arjax.tokenizers.resample import area_matrix, bicubic_matrix

HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class FlexVarFields(VarFields):
  """`config.model` of 'flexvar': VAR's fields plus the position map and the scale-list rule
  (arjax.orders.scale_lists; the default list is config.order.scales)."""
  pos_grid: int = 32                                # Gp, side of the learnable 2D position map.
  random_scales: bool = True                        # draw a scale list per training step.
  first_scales: Tuple[int, ...] = (1, 2)            # sides every random list starts with.
  draw_lo: Tuple[int, ...] = (3, 11)                # per draw range: smallest side.
  draw_hi: Tuple[int, ...] = (10, 15)               # per draw range: largest side.
  draw_count: Tuple[int, ...] = (5, 2)              # per draw range: distinct sides drawn.
  default_prob: float = ranged(0.05, lo=0.0, hi=1.0)  # probability of the default list.
  drop_thresholds: Tuple[float, ...] = (0.9, 0.95, 0.98, 0.99)  # u > t drops one more side.
  max_tokens: int = 680                             # token budget of a list (= training slots L).
  max_pn: int = 16                                  # sampling: a side above it is guided at the
                                                    # full cfg and drawn top-1 (released code).
  sampled_sides: Tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 23, 24, 32)  # sampling:
                                                    # other sides draw top-1; (): every side samples.

  def __post_init__(self):
    if isinstance(self.max_pn, bool) or not isinstance(self.max_pn, int) or self.max_pn < 1:
      raise ValueError(f"model.max_pn={self.max_pn!r}; expected an integer >= 1")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in self.sampled_sides):
      raise ValueError(f"model.sampled_sides={list(self.sampled_sides)}; expected integers >= 1")


def sinusoid_map(side: int, c: int) -> np.ndarray:
  """FlexVAR's initial position map float32 [side, side, C]: even channels sin(row w_i), odd
  channels cos(col w_i), w_i = 10000^(-2i / C)."""
  w = np.exp(np.arange(0, c, 2) * -(math.log(10000.0) / c))
  out = np.zeros((side, side, c))
  rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
  out[..., 0::2] = np.sin(rows[..., None] * w)
  out[..., 1::2] = np.cos(cols[..., None] * w)
  return out.astype(np.float32)


@functools.lru_cache(maxsize=None)
def _tables(grid: int, pos_grid: int):
  """Resampling matrices of every side 1..G, zero-padded (numpy float32):
  area [G+1, G, G] (area[s, :s] = area(G -> s)), pos [G+1, G, Gp] (area(Gp -> s)),
  bicubic [G+1, G+1, G, G] (bicubic[a, b, :b, :a] = bicubic(a -> b))."""
  g = grid
  area = np.zeros((g + 1, g, g), np.float32)
  pos = np.zeros((g + 1, g, pos_grid), np.float32)
  bic = np.zeros((g + 1, g + 1, g, g), np.float32)
  for s in range(1, g + 1):
    area[s, :s] = area_matrix(g, s)
    pos[s, :s] = area_matrix(pos_grid, s)
    for a in range(1, g + 1):
      bic[a, s, :s, :a] = bicubic_matrix(a, s)
  return area, pos, bic


class FlexVAR(VAR):
  """See the module docstring."""

  FIELDS = FlexVarFields
  flexible_scales = True

  def __init__(self, config, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    from arjax.models.registry import model_fields
    m = model_fields(FlexVarFields, config)
    # VAR's fixed tables go: FlexVAR has one position map and no level embedding.
    del self.pos_embed, self.level_embed
    if m.pos_grid < self.scales[-1]:
      raise ValueError(f"model.pos_grid={m.pos_grid} is below the grid {self.scales[-1]} "
                       f"(order.scales={list(self.scales)})")
    if not (len(m.draw_lo) == len(m.draw_hi) == len(m.draw_count)):
      raise ValueError(f"model.draw_lo={list(m.draw_lo)}, draw_hi={list(m.draw_hi)} and "
                       f"draw_count={list(m.draw_count)} must have one entry per range")
    self.pos_grid = m.pos_grid
    self.pos_map = make_param(rngs, lambda key, shape, dtype=jnp.float32: jnp.asarray(
        sinusoid_map(shape[0], shape[2]), dtype), (m.pos_grid, m.pos_grid, self.width),
        (None, None, "embed"))
    self.random_scales = m.random_scales
    self.max_pn, self.sampled_sides = m.max_pn, tuple(m.sampled_sides)
    self.spec = ScaleListSpec(
        grid=self.scales[-1], default=tuple(self.scales), first=tuple(m.first_scales),
        draws=tuple(zip(m.draw_lo, m.draw_hi, m.draw_count)), default_prob=m.default_prob,
        drop_thresholds=tuple(m.drop_thresholds), max_tokens=m.max_tokens,
        where="model").check()
    if self.spec.first[0] != self.scales[0]:
      raise ValueError(f"model.first_scales={list(self.spec.first)} must start at "
                       f"order.scales[0]={self.scales[0]} (pos_start has {self.scales[0] ** 2} "
                       "slots)")
    if self.order.markovian and self.order.markov_window != 0:
      # Random lists are laid out inside jit with a block-causal or block-diagonal mask.
      raise ValueError("model 'flexvar' takes order.markovian=True only with "
                       "order.markov_window=0 (scale k attends to itself)")

  # -- the frozen quantizer ------------------------------------------------------------------------
  def scale_quantizer(self):
    q = super().scale_quantizer()
    if getattr(q, "residual", True):
      raise ValueError("model 'flexvar' predicts non-residual scales: the tokenizer's quantizer "
                       "must be 'multiscale' with residual=False")
    return q

  # -- scale lists -----------------------------------------------------------------------------
  def check_sampling_scales(self, scales: Sequence[int], where: str = "sampling scales"
                            ) -> Tuple[int, ...]:
    """A list FlexVAR can sample at: increasing, from the first side, ending at the grid or
    beyond it up to the position map's side."""
    s = check_scales(scales, where)
    if s[0] != self.scales[0]:
      raise ValueError(f"{where}={list(s)}: the first side must be {self.scales[0]} "
                       f"(pos_start has {self.scales[0] ** 2} slots)")
    if s[-1] < self.scales[-1]:
      raise ValueError(f"{where}={list(s)}: the last side must be the tokenizer's grid "
                       f"{self.scales[-1]} or larger")
    if s[-1] > self.pos_grid:
      raise ValueError(f"{where}={list(s)}: side {s[-1]} exceeds the position table "
                       f"(model.pos_grid={self.pos_grid})")
    return s

  def scale_order(self, scales: Sequence[int]) -> ScaleOrder:
    """The 'scales' order of a list (the model's mask kind)."""
    s = tuple(int(x) for x in scales)
    if s == tuple(self.scales):
      return self.order
    return ScaleOrder(s, self.order.markovian, self.order.markov_window)

  def positions(self, scales: Sequence[int]) -> jax.Array:
    """float32 [N, C]: the position map area-interpolated to each side, scales concatenated."""
    p = self.pos_map[...]
    outs = []
    for s in scales:
      a = jnp.asarray(area_matrix(self.pos_grid, s), jnp.float32)
      outs.append(jnp.einsum("ip,pqc,jq->ijc", a, p, a, precision=HIGHEST).reshape(s * s, -1))
    return jnp.concatenate(outs, 0)

  # -- forward at a static list ----------------------------------------------------------------
  def embed_list(self, inputs, labels, scales):
    """inputs [B, N - s_1^2, Dv], labels [B] -> (x [B, N, C], cond [B, C])."""
    cond = self.cond(labels)
    sos = cond[:, None] + self.pos_start[...][None]
    x = jnp.concatenate([sos, self.word_embed(inputs.astype(jnp.float32))], 1)
    return x + self.positions(scales)[None], cond

  def forward_inputs(self, inputs, labels, *, scales=None, train: bool = False, key=None):
    """Teacher-forced forward at a static list (default: order.scales): Categorical [B, N]."""
    scales = tuple(self.scales if scales is None else scales)
    x, cond = self.embed_list(inputs, labels, scales)
    return self._blocks_head(x, cond, self.scale_order(scales).train_mask(), train, key)

  def _blocks_head(self, x, cond, mask, train, key):
    keys = [None] * self.depth if key is None else list(jax.random.split(key, self.depth))
    for blk, k in zip(self.blocks, keys):
      x, _ = blk(x, cond, mask, key=k if train else None)
    return self.head(x, cond)

  def list_tokens(self, f, scales):
    """Latent f [B, G, G, Dv] -> the non-residual tokens int32 [B, N] of a static list."""
    maps = self.scale_quantizer().independent_tokens(f, scales)
    return jnp.concatenate([q.reshape(q.shape[0], -1) for q in maps], 1)

  def list_inputs(self, tokens, scales):
    """tokens int32 [B, N] of a static list -> inputs [B, N - s_1^2, Dv]."""
    maps, start = [], 0
    for s in scales:
      maps.append(tokens[:, start:start + s * s].reshape(tokens.shape[0], s, s))
      start += s * s
    vq = self.scale_quantizer()
    return jax.lax.stop_gradient(vq.independent_inputs(maps, scales))

  def forward(self, tokens, labels, *, scales=None, train: bool = False, key=None):
    scales = tuple(self.scales if scales is None else scales)
    return self.forward_inputs(self.list_inputs(tokens, scales), labels, scales=scales,
                               train=train, key=key)

  # -- training at a random list inside jit ------------------------------------------------------
  def random_layout(self, key, f):
    """A random list and its padded layout. f [B, G, G, Dv] -> dict of
    sizes [M], count [], scale/side/row/col/valid [L], tokens int32 [B, L] (0 on invalid slots),
    inputs [B, L, Dv] (zeros on slot 0 and invalid slots), pos [L, C]."""
    sizes, count = sample_scale_list(key, self.spec)
    return self.list_layout(sizes, count, f)

  def list_layout(self, sizes, count, f):
    """As `random_layout` for a given fixed-size list (sizes int32 [M], count int32 [])."""
    vq = self.scale_quantizer()
    area, pos_t, bic = (jnp.asarray(t) for t in _tables(self.scales[-1], self.pos_grid))
    length = self.spec.max_tokens
    scale, side, row, col, valid = slot_tables(sizes, length)
    # Targets: NN(area(f, s)[r, c]) = NN(sum_ij A_s[r, i] A_s[c, j] f[i, j]).
    wr, wc = area[side, row], area[side, col]                                  # [L, G]
    feats = jnp.einsum("li,bijd,lj->bld", wr, jax.lax.stop_gradient(f.astype(jnp.float32)),
                       wc, precision=HIGHEST)
    tokens = jnp.where(valid[None], vq._lookup(feats), 0)
    # Inputs: bicubic(e[q_{k-1}], s_k)[r, c] = sum_u B[r, r_u] B[c, c_u] e[q_u], u in scale k-1.
    prev = sizes[jnp.maximum(scale - 1, 0)]
    br, bc = bic[prev, side, row], bic[prev, side, col]                        # [L, G]
    src = valid[None, :] & (scale[None, :] == scale[:, None] - 1) & valid[:, None]
    w = jnp.where(src, jnp.take(br, row, axis=1) * jnp.take(bc, col, axis=1), 0.0)  # [L, L]
    emb = jax.lax.stop_gradient(vq.code_vectors(tokens))
    inputs = jnp.einsum("tu,bud->btd", w, emb, precision=HIGHEST)
    pr, pc = pos_t[side, row], pos_t[side, col]                                # [L, Gp]
    pos = jnp.einsum("lp,pqc,lq->lc", pr, self.pos_map[...], pc, precision=HIGHEST)
    return dict(sizes=sizes, count=count, scale=scale, side=side, row=row, col=col,
                valid=valid, tokens=tokens, inputs=inputs, pos=pos)

  def layout_mask(self, scale) -> MaskSpec:
    """Block-causal over the slots' scales (invalid slots, scale M, are seen by none of the
    list's slots); block-diagonal under the Markovian window-0 mask."""
    if self.order.markovian:
      return MaskSpec(kind="dense", dense=(scale[:, None] == scale[None, :])[None, None])
    return MaskSpec(kind="block_causal", q_block_ids=scale[None], kv_block_ids=scale[None])

  def forward_layout(self, lay, labels, *, train: bool = False, key=None):
    """Categorical over the L slots of a padded layout."""
    cond = self.cond(labels)
    x = self.word_embed(lay["inputs"].astype(jnp.float32))
    first = self.scales[0] ** 2
    sos = jnp.broadcast_to(cond[:, None] + self.pos_start[...][None],
                           (x.shape[0], first, x.shape[2]))
    x = jnp.concatenate([sos, x[:, first:]], 1) + lay["pos"][None]
    return self._blocks_head(x, cond, self.layout_mask(lay["scale"]), train, key)

  def latent(self, batch):
    """The quantizer's input f [B, G, G, Dv] (after its proj_in), or None for a token batch."""
    if "latent" in batch:
      z = batch["latent"]
    elif "image" in batch:
      z = encoder_latents(self.tokenizer, batch["image"])
    else:
      return None
    vq = self.scale_quantizer()
    z = z.astype(jnp.float32)
    f = z if vq.proj_in is None else vq.proj_in(z)
    vq._check(f)
    return jax.lax.stop_gradient(f)

  def loss(self, batch: Dict[str, jax.Array], *, train: bool
           ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    f = self.latent(batch)
    if f is None or not (train and self.random_scales):
      if f is not None:
        batch = dict(batch, tokens=self.list_tokens(f, self.scales))
      return super().loss(batch, train=train)
    labels = batch["label"].astype(jnp.int32)
    if self.class_dropout > 0:
      keep = jax.random.uniform(self.rngs.dropout(), labels.shape) >= self.class_dropout
      labels = jnp.where(keep, labels, self.null_class)
    lay = self.random_layout(self.rngs.dropout(), f)
    key = self.rngs.dropout() if self.drop_path > 0 else None
    dist = self.forward_layout(lay, labels, train=True, key=key)
    w = jnp.broadcast_to(lay["valid"][None], lay["tokens"].shape).astype(jnp.float32)
    if "mask" in batch:
      w = w * batch["mask"][:, None].astype(jnp.float32)
    # Weighted mean over the valid slots: 1/N per token of the drawn list (FlexVAR's loss).
    loss, per_token = dist.loss(lay["tokens"], weights=w)
    metrics = token_metrics(dist, loss, per_token, lay["tokens"], w)
    metrics["num_scales"] = lay["count"].astype(jnp.float32)
    return loss, metrics

  # -- decoding ----------------------------------------------------------------------------------
  def sampling_rule(self, side: int) -> Tuple[bool, bool]:
    """(greedy, full guidance) of a side (static) in the released sampler (models/flexvar.py
    autoregressive_infer_cfg): t = cfg instead of the ramp's cfg ratio above max_pn; top-1 above
    max_pn or outside its list of trained sides (here `sampled_sides`)."""
    full = side > self.max_pn
    return full or (bool(self.sampled_sides) and side not in self.sampled_sides), full

  def decode_scale(self, k: int, inputs, labels, caches, order: Optional[ScaleOrder] = None):
    """Scale k (static) of `order` (default: the model's): inputs [B, s_k^2, Dv] (None at
    k = 0) -> (Categorical over [B, s_k^2], caches)."""
    order = self.order if order is None else order
    a, e = order.bounds[k]
    cond = self.cond(labels)
    if k == 0:
      x = cond[:, None] + self.pos_start[...][None]
    else:
      x = self.word_embed(inputs.astype(jnp.float32))
    x = x + self.positions(order.scales[k:k + 1])[None]
    mask = order.decode_mask(k)
    out = []
    for blk, cache in zip(self.blocks, caches):
      x, cache = blk(x, cond, mask, cache=cache, index=a)
      out.append(cache)
    return self.head(x, cond), out

  def sample_update(self, vq, order, k: int, idx, f_hat):
    """After scale k's tokens idx [B, s, s]: (the reconstruction so far: phi(e[q_k]) at side s_k,
    the next pass's inputs [B, s_{k+1}^2, Dv] or None)."""
    from arjax.tokenizers.resample import bicubic_resize
    emb = jax.lax.stop_gradient(vq.code_vectors(idx))
    if k + 1 == len(order.scales):
      return vq.phi(len(vq.scales) - 1, emb), None
    nxt = order.scales[k + 1]
    return emb, bicubic_resize(emb, nxt).reshape(idx.shape[0], nxt * nxt, vq.code_dim)


def encoder_latents(tokenizer, images):
  """uint8 images [B, H, W, C] -> the quantizer's input [B, G, G, Zq] through the frozen
  autoencoder behind a tokenizer (the module, a trained run, or a 'cached' tokenizer's decoder)."""
  from arjax.models.autoencoder import to_float
  ae = frozen_autoencoder(tokenizer)
  if ae is None:
    raise ValueError(f"model 'flexvar' trains on images through the tokenizer's encoder, but "
                     f"{type(tokenizer).__name__} has none: pass batch['latent'] or cached tokens")
  return jax.lax.stop_gradient(ae.latents(to_float(images, ae.image_size, ae.channels)))


def decode_latent(tokenizer, f_hat):
  """A sampled reconstruction f_hat float32 [B, S, S, Dv] of ANY side S (a list ending above
  the tokenizer grid G: a larger latent) -> uint8 images [B, S F, S F, C] through the frozen
  autoencoder's (fully convolutional; its attention takes any number of positions) decoder,
  F = image side / G. At S = G it is what decoding the last scale's tokens gives."""
  from arjax.models.autoencoder import to_uint8
  ae = frozen_autoencoder(tokenizer)
  if ae is None:
    raise ValueError(f"{type(tokenizer).__name__} has no autoencoder to decode a sampled latent "
                     "to pixels (set tokenizer.checkpoint to the tokenizer run)")
  return to_uint8(jax.lax.stop_gradient(ae.decode_latents(f_hat)))


register_support("flexvar", mask_kinds=("block",), orders=("scales",))


@MODELS.register("flexvar", fields=FlexVarFields)
def _build(config, *, rngs):
  return FlexVAR(config, rngs=rngs)
