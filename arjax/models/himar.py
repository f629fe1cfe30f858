"""Hi-MAR: hierarchical masked autoregression with low-resolution token pivots (Zheng et al.,
ICML 2025; HiDream-ai/himar models/himar.py, read at commit 1d378c1).

Two phases of MAR-style masked generation over continuous tokens, run by ONE shared
encoder-decoder (MAR's parts: arjax.models.mar's fields, decoder config, mask-ratio sampler):

  phase 1  the Np = s x s pivot tokens (official: 8x8x16, the KL-16 latents of the image resized
           to 128 px), MAR's per-token MLP diffusion head (`model.head`, 'diffusion').
  phase 2  the N = H x W grid tokens, conditioned on the pivots through the phase-1 decoder
           states z of the pivot positions; a DiT-style global-attention diffusion head over
           the whole grid (`model.global_head`, 'global_diffusion', arjax.heads.global_diffusion).

Every phase runs the same layout [P buffer slots | Np pivot slots | N grid slots]:

  encoder  slot values: class embedding (buffer), pivot-slot vectors, z_proj(grid tokens)
           + the phase's learned positions -> LayerNorm -> ViT blocks over the VISIBLE slots
           (segment ids, as MAR) -> final LayerNorm.
  decoder  decoder_embed at visible slots, the phase's learned per-position [MASK] vectors at
           masked ones, + the phase's positions -> blocks -> LayerNorm; buffer dropped;
           + diffusion positions [Np + N, Dd] -> z [B, Np + N, Dd].

The phase (task) conditions every block (official Block with num_tasks=2): a shared vector
a = Linear(silu(task_embed[task])) [4D] per stack, and per block m = a * S[task] + H[task]
(S zero-, H [0, 1, 0, 1]-initialised) split into (scale_attn, gate_attn, scale_mlp, gate_mlp):
x + gate (attn(LN(x) (1 + scale))). Here arjax's adaLN block with its modulation replaced by
`TaskModulation` (no shift), fed cond = [a, onehot(task)].

  phase 1 pivot slots: cond_proj(pivot tokens), visible where known; grid slots all masked.
  phase 2 pivot slots: cond_z_proj(z1 of the pivot), all visible; grid slots visible where known.
          In training the pivots phase 1 did not predict (its visible ones) hold cond_proj(the
          learned null pivots), and a whole row holds the null pivots with probability
          `pivot_drop_prob(step)` = 1 - (1 - pivot_drop) min(1, e / pivot_drop_warmup), e the
          step rounded down to a multiple of pivot_drop_every (official models/himar.py
          forward_mae_encoder_stage2: 1 - step_stage2_rate min(1, epoch / step_warmup),
          main_himar.py 0.25 and 100 epochs: 1 at epoch 0, 0.75 from epoch 100).

Training: phase-1 mask ratio ~ MAR's truncated normal on [mask_ratio_min, 1] (ceil(Np r)
pivots); phase-2 ratio cos(pi/2 u), u ~ U[0, 1) (official `--cos`), ceil(N r) grid tokens, each
one ratio per batch and a random order per row; loss = pivot_loss_weight * head loss on masked
pivots + grid_loss_weight * global-head loss on masked grid tokens (official 2.0 and 0.75);
class dropout drawn per phase. Pivot targets: batch['pivots'] [B, Np, C] if given (the official
cached 128 px latents), else by `pivot_source`: 'encode_lowres' (`lowres_pivots`: the official
source, the image bicubic-downsampled to s / G of its side and encoded by the tokenizer's frozen
autoencoder; needs batch['image']) or 'average' (`pivots_from_grid`, the area average of the grid
tokens; an arjax fallback, not the official source).

Sampling ('himar' sampler, arjax.sampling.two_phase): `pivot_steps` steps over the pivots
(official cond_scale * 4 = 32) with linear CFG `pivot_cfg` (official re_cfg), then the sampler's
steps over the grid with linear CFG eval.cfg_scale; MAR's cosine count, a random order per row.

Legend: B batch, N grid tokens, Np pivots, C channels, P buffer, D / Dd encoder / decoder width.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from arjax.heads.base import (HEADS, build_head, check_targets, continuous_token_dim,
                              head_is_continuous, head_node, token_metrics)
from arjax.kernels.masks import MaskSpec
from arjax.models.autoencoder import frozen_autoencoder
from arjax.models.mar import MARFields, decoder_config
from arjax.models.registry import MODELS, model_fields
from arjax.nn.layers import Dense, Embed, LayerNorm, make_param
from arjax.nn.transformer import Transformer, TransformerConfig
from arjax.orders.schedules import mar_mask_ratio, mar_num_masked
from arjax.registry import read_fields
from arjax.tokenizers import build_tokenizer

NUM_TASKS = 2
PIVOT_SOURCES = ("average", "encode_lowres")


@dataclasses.dataclass(frozen=True)
class HiMARFields(MARFields):
  """`config.model` of 'himar': MAR's fields plus the pivots, the phases and the global head
  (sub-node `model.global_head`: arjax.heads.global_diffusion.GlobalDiffusionFields)."""
  SUBNODES = {**MARFields.SUBNODES, "global_head": None}
  pivot_grid: int = 8             # s: s x s pivots (official cond_scale 8).
  pivot_steps: int = 32           # phase-1 sampling steps (official cond_scale * 4).
  pivot_cfg: float = 1.0          # phase-1 linear CFG scale (official re_cfg).
  grid_steps: int = 4             # phase-2 sampling steps (official num_iter).
  pivot_drop: float = 0.75        # P(a phase-2 training row sees only the null pivots), after
                                  # the ramp (official 1 - step_stage2_rate = 1 - 0.25).
  pivot_drop_warmup: int = 0      # steps over which that P falls from 1 to pivot_drop
                                  # (official step_warmup: 100 epochs); 0: constant pivot_drop.
  pivot_drop_every: int = 1       # the ramp moves once every this many steps (official: once
                                  # per epoch, model.epoch).
  pivot_source: str = "average"   # pivot targets without batch['pivots']: 'average' (block
                                  # mean of the grid latent) or 'encode_lowres' (official).
  pivot_loss_weight: float = 2.0
  grid_loss_weight: float = 0.75

  def __post_init__(self):
    super().__post_init__()
    for name in ("pivot_grid", "pivot_steps", "grid_steps"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"model.{name}={v!r}; expected an integer >= 1")
    if not (isinstance(self.pivot_drop, (int, float)) and 0.0 <= self.pivot_drop <= 1.0):
      raise ValueError(f"model.pivot_drop={self.pivot_drop!r}; expected a number in [0, 1]")
    for name in ("pivot_drop_warmup", "pivot_drop_every"):
      v = getattr(self, name)
      lo = 0 if name == "pivot_drop_warmup" else 1
      if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"model.{name}={v!r}; expected an integer >= {lo}")
    if self.pivot_source not in PIVOT_SOURCES:
      raise ValueError(f"model.pivot_source={self.pivot_source!r}; expected one of "
                       f"{list(PIVOT_SOURCES)}")
    for name in ("pivot_cfg", "pivot_loss_weight", "grid_loss_weight"):
      v = getattr(self, name)
      if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
        raise ValueError(f"model.{name}={v!r}; expected a finite number >= 0")


def pivots_from_grid(tokens, grid, pivot_grid: int):
  """tokens [B, H W, C] (row-major) -> [B, s s, C]: the mean of each (H/s) x (W/s) block."""
  b, _, c = tokens.shape
  h, w = grid
  s = pivot_grid
  x = tokens.reshape(b, s, h // s, s, w // s, c)
  return x.mean((2, 4)).reshape(b, s * s, c)


def pivot_drop_prob(step, final: float, warmup: int, every: int = 1):
  """P(a phase-2 training row sees only the null pivots) at training step `step` (scalar):
  1 - (1 - final) min(1, e / warmup), e = every floor(step / every) (official
  1 - step_stage2_rate min(1, epoch / step_warmup), the epoch counted in steps); final when
  warmup = 0 or step is None."""
  if warmup == 0 or step is None:
    return jnp.asarray(final, jnp.float32)
  e = (jnp.asarray(step, jnp.int32) // every * every).astype(jnp.float32)
  return 1.0 - (1.0 - final) * jnp.minimum(1.0, e / warmup)


def lowres_pivots(tokenizer, images, pivot_grid: int):
  """uint8 images [B, H, W, C] -> pivot tokens [B, s s, C']: the tokenizer's frozen autoencoder
  on the image bicubic-downsampled (PyTorch's kernel, a = -0.75, no antialiasing; on [-1, 1]
  floats) to s / G of its side, G the autoencoder's grid (official main_cache.py cache_latents:
  F.interpolate(256 px, 128, 'bicubic') -> the same VAE -> 8 x 8 latents)."""
  from arjax.models.autoencoder import to_float
  from arjax.tokenizers.resample import bicubic_resize
  ae = frozen_autoencoder(tokenizer)
  if ae is None:
    raise ValueError(f"model.pivot_source='encode_lowres' encodes a low-resolution image with the "
                     f"tokenizer's autoencoder, but {type(tokenizer).__name__} has none: set "
                     "tokenizer.checkpoint to the autoencoder run, or pass batch['pivots']")
  x = to_float(images, ae.image_size, ae.channels)
  g = tuple(ae.grid)
  h, w = x.shape[1], x.shape[2]
  if (h * pivot_grid) % g[0] or (w * pivot_grid) % g[1]:
    raise ValueError(f"model.pivot_grid={pivot_grid}: the image {h}x{w} on a {g[0]}x{g[1]} grid "
                     f"has no whole low-resolution side (H s / G)")
  x = bicubic_resize(x, (h * pivot_grid // g[0], w * pivot_grid // g[1]))
  return jax.lax.stop_gradient(ae.quantizer.encode(ae.latents(x)))


class TaskModulation(nnx.Module):
  """The official per-block task modulation. cond [B, 1, 4D + T] = [a, onehot(task)] ->
  (shift 0, scale_attn, gate_attn, shift 0, scale_mlp, gate_mlp), each [B, 1, D]."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    del rngs
    self.dim = dim
    self.scale = nnx.Param(jnp.zeros((NUM_TASKS, 4 * dim), jnp.float32))
    one = np.concatenate([np.zeros(dim), np.ones(dim), np.zeros(dim), np.ones(dim)])
    self.shift = nnx.Param(jnp.asarray(np.tile(one, (NUM_TASKS, 1)), jnp.float32))

  def __call__(self, cond):
    a, onehot = cond[..., :4 * self.dim], cond[..., 4 * self.dim:]
    m = a * (onehot @ self.scale[...]) + onehot @ self.shift[...]
    sc1, g1, sc2, g2 = jnp.split(m, 4, axis=-1)
    zero = jnp.zeros_like(sc1)
    return zero, sc1, g1, zero, sc2, g2


def task_transformer(cfg: TransformerConfig, *, rngs: nnx.Rngs) -> Transformer:
  """arjax's adaLN blocks with the official task modulation in place of their adaLN-Zero."""
  if cfg.scan_layers:
    raise ValueError("model 'himar' replaces each block's modulation: model.backbone."
                     "scan_layers=True is not supported; use False")
  t = Transformer(dataclasses.replace(cfg, adaln=True, cond_dim=NUM_TASKS), rngs=rngs)
  for block in t.blocks:
    block.ada = TaskModulation(cfg.dim, rngs=rngs)
  return t


class HiMAR(nnx.Module):

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = model_fields(HiMARFields, config)
    self.fields = m
    self.tokenizer = build_tokenizer(config)
    if not head_is_continuous(config):
      raise ValueError(f"model 'himar' models continuous tokens: model.head.name="
                       f"{head_node(config)['name']!r} is discrete; use 'diffusion'")
    self.head_name = head_node(config)["name"]
    c = continuous_token_dim(self.tokenizer, head=self.head_name)
    grid = tuple(self.tokenizer.grid)
    s = m.pivot_grid
    if grid[0] % s or grid[1] % s:
      raise ValueError(f"model.pivot_grid={s} does not divide the token grid {grid[0]}x{grid[1]}"
                       f" (tokenizer.grid): pivots average (H/s) x (W/s) blocks")
    enc = TransformerConfig.from_config(config.model.backbone)
    if enc.position != "none":
      raise ValueError(f"model 'himar' adds its own learned positions: model.backbone.position="
                       f"{enc.position!r}; expected 'none'")
    if enc.adaln:
      raise ValueError("model 'himar' conditions its blocks on the phase itself: "
                       "model.backbone.adaln must be False")
    dec = decoder_config(enc, m)
    n, np_, p = grid[0] * grid[1], s * s, m.buffer_size
    self.grid, self.num_tokens, self.num_pivots, self.buffer_size = grid, n, np_, p
    self.channels, self.dec_dim = c, dec.dim
    self.num_classes, self.null_class = m.num_classes, m.num_classes
    self.class_dropout = m.class_dropout
    dt = enc.compute_dtype
    std = nnx.initializers.normal(stddev=0.02)
    xavier = nnx.initializers.xavier_uniform()
    d, dd = enc.dim, dec.dim
    L = p + np_ + n
    lin = lambda i, o, axes: Dense(i, o, axes=axes, rngs=rngs, dtype=dt, use_bias=True,
                                   init=xavier)
    self.class_embed = Embed(m.num_classes + 1, d, rngs=rngs, axes=(None, "embed"), dtype=dt)
    self.z_proj = lin(c, d, (None, "embed"))
    self.cond_proj = lin(c, d, (None, "embed"))            # pivot tokens -> encoder width.
    self.cond_z_proj = lin(dd, d, (None, "embed"))         # phase-1 z of a pivot -> encoder.
    self.null_pivots = make_param(rngs, std, (np_, c), (None, None))  # official cond_tokens.
    self.z_proj_ln = LayerNorm(d, rngs=rngs, eps=1e-6)
    self.encoder_pos = make_param(rngs, std, (NUM_TASKS, L, d), (None, None, "embed"))
    self.encoder_task = Embed(NUM_TASKS, d, rngs=rngs, axes=(None, "embed"), dtype=dt)
    self.encoder_ada = lin(d, 4 * d, ("embed", None))
    self.encoder = task_transformer(enc, rngs=rngs)
    self.decoder_embed = lin(d, dd, ("embed", None))
    self.mask_token = make_param(rngs, std, (NUM_TASKS, np_ + n, dd), (None, None, "embed"))
    self.decoder_pos = make_param(rngs, std, (NUM_TASKS, L, dd), (None, None, "embed"))
    self.decoder_task = Embed(NUM_TASKS, dd, rngs=rngs, axes=(None, "embed"), dtype=dt)
    self.decoder_ada = lin(dd, 4 * dd, ("embed", None))
    self.decoder = task_transformer(dec, rngs=rngs)
    self.diffusion_pos = make_param(rngs, std, (np_ + n, dd), (None, "embed"))
    self.head = build_head(config, dd, self.tokenizer, rngs=rngs, dtype=dt)
    g_node = config.model.get("global_head", None)
    g_name = (g_node or {}).get("name", "global_diffusion")
    g_cls = HEADS.get(g_name, field="config.model.global_head.name")
    g_fields = read_fields(HEADS.fields(g_name), g_node,
                           f"head {g_name!r} (config.model.global_head)")
    self.global_head = g_cls(dd, self.tokenizer, g_fields, rngs=rngs, dtype=dt)
    self.rngs = rngs

  # -- the shared encoder-decoder ---------------------------------------------------------------
  def _task_cond(self, embed, ada, task: int, b: int):
    a = ada(jax.nn.silu(embed(jnp.asarray([task])))).astype(jnp.float32)         # [1, 4D]
    onehot = jax.nn.one_hot(jnp.asarray([task]), NUM_TASKS, dtype=jnp.float32)
    return jnp.broadcast_to(jnp.concatenate([a, onehot], -1)[:, None],
                            (b, 1, a.shape[-1] + NUM_TASKS))

  def condition(self, task: int, pivot_slots, tokens, labels, visible, *, train: bool = False):
    """task 0 (pivots) or 1 (grid); pivot_slots float [B, Np, D] (encoder width), tokens
    [B, N, C], labels int32 [B], visible bool [B, Np + N] -> z float32 [B, Np + N, Dd].
    Values at invisible slots do not reach the output."""
    b = labels.shape[0]
    p = self.buffer_size
    x = jnp.concatenate([pivot_slots.astype(jnp.float32),
                         self.z_proj(tokens.astype(jnp.float32)).astype(jnp.float32)], 1)
    cls = self.class_embed(labels).astype(jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls[:, None], (b, p, x.shape[-1])), x], 1)
    x = self.z_proj_ln(x + self.encoder_pos[task])
    vis = jnp.concatenate([jnp.ones((b, p), bool), visible], 1)
    seg = vis.astype(jnp.int32)
    zeros = jnp.zeros(seg.shape, jnp.int32)
    enc_mask = MaskSpec(kind="bidirectional", q_segment_ids=seg, kv_segment_ids=seg)
    h, _ = self.encoder(x, positions=zeros, mask=enc_mask, deterministic=not train,
                        cond=self._task_cond(self.encoder_task, self.encoder_ada, task, b))
    y = self.decoder_embed(h).astype(jnp.float32)
    mask_tok = jnp.concatenate([jnp.zeros((p, y.shape[-1]), jnp.float32),
                                self.mask_token[task].astype(jnp.float32)], 0)
    y = jnp.where(vis[..., None], y, mask_tok) + self.decoder_pos[task]
    y, _ = self.decoder(y, positions=zeros, mask=MaskSpec(kind="bidirectional"),
                        deterministic=not train,
                        cond=self._task_cond(self.decoder_task, self.decoder_ada, task, b))
    return y[:, p:] + self.diffusion_pos[...]

  def phase1(self, pivots, labels, pivot_known, *, train: bool = False):
    """pivots [B, Np, C], pivot_known bool [B, Np] -> z1 [B, Np, Dd] (grid slots all masked)."""
    b = labels.shape[0]
    vis = jnp.concatenate([pivot_known, jnp.zeros((b, self.num_tokens), bool)], 1)
    tokens = jnp.zeros((b, self.num_tokens, self.channels), jnp.float32)
    z = self.condition(0, self.cond_proj(pivots.astype(jnp.float32)), tokens, labels, vis,
                       train=train)
    return z[:, :self.num_pivots]

  def phase2(self, pivot_slots, tokens, labels, known, *, train: bool = False):
    """pivot_slots [B, Np, D] (`pivot_z_slots` / `null_pivot_slots`), tokens [B, N, C],
    known bool [B, N] -> z2 [B, N, Dd] (every pivot slot visible)."""
    b = labels.shape[0]
    vis = jnp.concatenate([jnp.ones((b, self.num_pivots), bool), known], 1)
    return self.condition(1, pivot_slots, tokens, labels, vis, train=train)[:, self.num_pivots:]

  def pivot_z_slots(self, z1):
    return self.cond_z_proj(z1.astype(jnp.float32)).astype(jnp.float32)

  def null_pivot_slots(self, b: int):
    s = self.cond_proj(self.null_pivots[...].astype(jnp.float32)).astype(jnp.float32)
    return jnp.broadcast_to(s[None], (b,) + s.shape)

  # -- training ---------------------------------------------------------------------------------
  def batch_tokens(self, batch):
    for key in ("latents", "tokens"):
      if key in batch:
        return batch[key]
      # A 'cached' tokenizer cannot encode; the frozen autoencoder behind it (the one that also
    # encodes the low-resolution pivots) can.
    ae = frozen_autoencoder(self.tokenizer)
    return (self.tokenizer if ae is None else ae).encode(batch["image"])

  def batch_pivots(self, batch, tokens):
    """[B, Np, C]: batch['pivots'], else by model.pivot_source."""
    if "pivots" in batch:
      return batch["pivots"]
    if self.fields.pivot_source == "encode_lowres":
      if "image" not in batch:
        raise ValueError(f"model.pivot_source='encode_lowres' needs batch['image'] (uint8 "
                         f"[B, H, W, C]) or batch['pivots'] [B, {self.num_pivots}, "
                         f"{self.channels}]; the batch has {sorted(batch)}")
      return lowres_pivots(self.tokenizer, batch["image"], self.fields.pivot_grid)
    return pivots_from_grid(tokens.astype(jnp.float32), self.grid, self.fields.pivot_grid)

  def drop_prob(self, step):
    f = self.fields
    return pivot_drop_prob(step, f.pivot_drop, f.pivot_drop_warmup, f.pivot_drop_every)

  def phase2_pivot_slots(self, z1, m1, key, step=None, *, train: bool):
    """Phase-2 training pivot slots [B, Np, D]: cond_z_proj(z1) where phase 1 predicted
    (m1 [B, Np]), the null pivots elsewhere, and on every slot of a row dropped with probability
    `drop_prob(step)` (train only). -> (slots, dropped bool [B])."""
    b = z1.shape[0]
    null = self.null_pivot_slots(b)
    slots = jnp.where(m1[..., None], self.pivot_z_slots(jax.lax.stop_gradient(z1)), null)
    if not train:
      return slots, jnp.zeros((b,), bool)
    drop = jax.random.uniform(key, (b,)) < self.drop_prob(step)
    return jnp.where(drop[:, None, None], null, slots), drop

  @staticmethod
  def random_mask(key, num_masked, b: int, n: int):
    """bool [B, n]: the first num_masked cells of a random order per row."""
    rank = jnp.argsort(jax.random.uniform(key, (b, n)), 1).argsort(1)
    return rank < num_masked

  def train_masks(self, key, b: int):
    """(pivot mask [B, Np]: ceil(Np r1), r1 ~ MAR's truncated normal; grid mask [B, N]:
    ceil(N r2), r2 = cos(pi/2 u)), one ratio per batch per phase."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    f = self.fields
    r1 = mar_mask_ratio(k1, (), f.mask_ratio_min, f.mask_ratio_std)
    r2 = jnp.cos(jax.random.uniform(k2, ()) * jnp.pi / 2)
    m1 = self.random_mask(k3, mar_num_masked(r1, self.num_pivots), b, self.num_pivots)
    m2 = self.random_mask(k4, mar_num_masked(r2, self.num_tokens), b, self.num_tokens)
    return m1, m2

  def _drop_labels(self, labels, train):
    if train and self.class_dropout > 0:
      keep = jax.random.uniform(self.rngs.dropout(), labels.shape) >= self.class_dropout
      return jnp.where(keep, labels, self.null_class)
    return labels

  def loss(self, batch: Dict[str, jax.Array], *, train: bool
           ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    tokens = self.batch_tokens(batch)
    b = tokens.shape[0]
    check_targets(tokens, self.head.token_shape, jnp.float32, (b, self.num_tokens),
                  self.head_name)
    pivots = self.batch_pivots(batch, tokens)
    check_targets(pivots, self.head.token_shape, jnp.float32, (b, self.num_pivots),
                  f"{self.head_name} (batch['pivots'])")
    labels = batch["label"].astype(jnp.int32)
    k_mask, k_h1, k_h2, k_drop = jax.random.split(
        self.rngs.sample() if train else jax.random.key(0), 4)
    m1, m2 = self.train_masks(k_mask, b)
    w = jnp.ones((b,), jnp.float32)
    if "mask" in batch:  # padded evaluation batches
      w = batch["mask"].astype(jnp.float32)
    z1 = self.phase1(pivots, self._drop_labels(labels, train), ~m1, train=train)
    w1 = m1.astype(jnp.float32) * w[:, None]
    loss1, per1 = self.head(z1).loss(pivots.astype(jnp.float32), key=k_h1, weights=w1)
    # Phase 2: the pivots phase 1 predicted carry their (stopped) z1, the others the null
    # pivots; a whole row the null pivots with probability drop_prob(step).
    slots, dropped = self.phase2_pivot_slots(z1, m1, k_drop, batch.get("step"), train=train)
    z2 = self.phase2(slots, tokens, self._drop_labels(labels, train), ~m2, train=train)
    w2 = m2.astype(jnp.float32) * w[:, None]
    dist2 = self.global_head(z2)
    loss2, per2 = dist2.loss(tokens.astype(jnp.float32), key=k_h2, weights=w2)
    f = self.fields
    loss = f.pivot_loss_weight * loss1 + f.grid_loss_weight * loss2
    metrics = token_metrics(dist2, loss2, per2, tokens, w2)
    metrics["loss"] = loss
    metrics["pivot_loss"], metrics["grid_loss"] = loss1, loss2
    metrics["pivot_mask_ratio"] = m1.astype(jnp.float32).mean()
    metrics["mask_ratio"] = m2.astype(jnp.float32).mean()
    metrics["pivot_drop"] = dropped.astype(jnp.float32).mean()
    return loss, metrics

  def default_sampler(self) -> str:
    return "himar"


@MODELS.register("himar", fields=HiMARFields)
def _build(config, *, rngs):
  return HiMAR(config, rngs=rngs)
