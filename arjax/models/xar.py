"""xAR: next-entity prediction with noisy-context flow matching (Ren et al. 2025, "Beyond
Next-Token: Next-X Prediction for Autoregressive Visual Generation"; OliverRensu/xAR
models/xar.py, models/sampler.py).

**Entities.** The token grid [H, W] is cut into E entities, each predicted as a whole at one AR
step (`EntityLayout`, field `model.entity`):

  cell       k x k neighbouring tokens (k = model.entity_size): (H/k)(W/k) entities in raster
             order of the blocks, raster order inside a block. The official code's only setting
             is k = 8 on 16 x 16 KL-16 latents: 4 entities of 64 tokens.
  subsample  k x k tokens spread at stride (H/k, W/k): entity (a, b) holds the tokens
             (a + i H/k, b + j W/k), i, j < k; (H/k)(W/k) entities.
  scale      the latent area-downsampled to the sides `model.scales` (small to large, the last
             the grid; the default halves the grid while it divides evenly); entity k is the
             whole map of side s_k, and the last map is the image's tokens.

The model sees the S slots of the entities concatenated (S = N for cell and subsample, sum s_k^2
for scale), each with a learned position per slot and 2D RoPE at its (row, col) in its own map.

**Noisy context flow matching.** Convention (the library's, `arjax.heads.flow`): t runs from
noise at t = 0 to data at t = 1,

    x_t = t x + (1 - t) eps,   eps ~ N(0, I),   v = x - eps.

xAR's code uses the reverse time, x_s = (1 - s) x + s eps with target eps - x: s = 1 - t and its
velocity is minus this one; the two are the same path. In training every entity k gets its own
t_k (logit-normal, sigmoid(n), n ~ N(0, 1) as the official code; `model.head.time_sampling`),
ALL entities are fed noised at their own t_k (`noisy_context`), and one block-causal pass
(entity k sees entities <= k, bidirectionally inside its own) predicts the velocity of every
slot; the loss is the MSE over all slots and channels. The context is therefore never clean in
training (the paper's Noisy Context Learning); at sampling the earlier entities enter the KV
cache clean, at t = 1 (the official t = 0).

**Network.** The whole transformer is the velocity network (there is no per-token head MLP; the
"head" is the final Linear to C channels): z_proj Linear(C -> D) + learned positions -> RMSNorm ->
encoder blocks -> RMSNorm -> Linear(D -> Dd) + learned positions -> decoder blocks -> RMSNorm ->
Linear(Dd -> C). Every block is the shared `arjax.nn.transformer` block (RMSNorm, SwiGLU, 2D RoPE,
biases in attention and adaLN) with adaLN from the per-slot condition

    cond = class_embed(label) + TimeEmbed(1000 t_k)     (t_k of the slot's entity)

(TimeEmbed: the sinusoidal embedding of arjax.heads.adaln_mlp then Linear-SiLU-Linear, as the
official TimestepEmbedder). The class table has num_classes + 1 rows, the last the null class
(dropped in with probability class_dropout, 0.1 officially).

Differences from the official blocks, stated because they move the parameter count by 0.03 %:
its RMSNorms inside the blocks have no weight (here they have one, 2 D per block) and its SwiGLU
(timm) has biases (2 Dh + D per block; the shared SwiGLU has none). Its attention drops
probabilities at 0.1 (here `resid_dropout` / `ffn_dropout` only) and its EVA-style RoPE rotates
interleaved halves per axis; the one here is LlamaGen's 2D RoPE. Initialisation: the official
code initialises every Linear (adaLN projections included) Xavier-uniform; the shared blocks'
adaLN projections start at zero (adaLN-Zero). Its time embedding sees the integer (1000 s).long();
here the float 1000 t.

**Sampling** ('next_entity', arjax.sampling.next_entity): entity by entity, the previous entity
is fed clean (t = 1) to write its keys and values, then the entity's slots start from
temperature * eps and are integrated from t = 0 to 1 with the flow head's solvers
(`arjax.heads.flow.integrate`: Euler or Heun, `model.head.num_sampling_steps` steps) through the
whole network against the cache, CFG on the velocity (v_u + w (v_c - v_u)); the official ramp
w_k = 1 + (w - 1) k / (E - 1) is the 'linear' schedule by steps. `model.sde=True` samples with
the official Euler-Maruyama SDE instead (linspace(1, 0.04, S) in its time, then a last
deterministic step; arjax.sampling.next_entity).

Legend: B batch, N = H W tokens, S slots, E entities, G slots of one entity, C token channels,
D encoder width, Dd decoder width.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from arjax.heads.adaln_mlp import FREQ_DIM, timestep_embedding
from arjax.heads.base import check_targets, continuous_token_dim, token_metrics
from arjax.heads.flow import TIME_SCALE, FlowFields, draw_times, interpolate
from arjax.kernels.masks import MaskSpec
from arjax.models.registry import MODELS, GeneratorFields, model_fields
from arjax.nn.layers import Dense, Embed, RMSNorm, make_param
from arjax.nn.transformer import Transformer, TransformerConfig
from arjax.orders.scales import check_scales
from arjax.registry import read_fields
from arjax.tokenizers import build_tokenizer
from arjax.tokenizers.resample import area_resize

ENTITIES = ("cell", "subsample", "scale")


@dataclasses.dataclass(frozen=True)
class XARFields(GeneratorFields):
  """`config.model` of 'xar'. `model.backbone` is the encoder stack (TransformerConfig; adaln must
  be True); the decoder is the same block with its own depth, width and heads. `model.head` must
  be 'flow': its time sampling and solver fields are used, its MLP fields (width, depth,
  batch_mul) do not apply (the velocity network is the backbone)."""
  SUBNODES = {"backbone": TransformerConfig, "head": None}
  entity: str = "cell"            # 'cell' | 'subsample' | 'scale' (see the module docstring).
  entity_size: int = 8            # k: an entity is k x k tokens (cell, subsample).
  scales: Tuple[int, ...] = ()    # scale entities: sides, small to large (): halve the grid.
  decoder_layers: int = 2         # decoder depth (xAR-B 8, L 16, H 20).
  decoder_dim: int = 0            # Dd (0: the encoder's width).
  decoder_heads: int = 0          # decoder heads (0: the encoder's).
  sde: bool = False               # sample with the official Euler-Maruyama SDE (head.solver
                                  # must then be 'euler'; see arjax.sampling.next_entity).

  def __post_init__(self):
    if self.entity not in ENTITIES:
      raise ValueError(f"model.entity={self.entity!r}; expected one of {list(ENTITIES)}")
    for name, lo in (("entity_size", 1), ("decoder_layers", 1), ("decoder_dim", 0),
                     ("decoder_heads", 0)):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"model.{name}={v!r}; expected an integer >= {lo}")
    if not isinstance(self.sde, bool):
      raise ValueError(f"model.sde={self.sde!r}; expected True or False")
    if self.token_dropout:
      raise ValueError(f"model.token_dropout={self.token_dropout!r}: model 'xar' has no input "
                       "token dropout (its inputs are noised entities)")


# -- entities ------------------------------------------------------------------------------------
class EntityLayout:
  """The slots of the E entities (static numpy tables).

  entity_ids int32 [S] (non-decreasing: the entities are contiguous runs of slots), bounds: the
  (start, end) slots of each entity, positions int32 [S, 2] (row, col in the slot's own map).
  cell / subsample: perm int32 [S = N], slot s holds grid token perm[s] (raster index r W + c);
  scale: the sides of the maps (slots of the last map are the grid in raster order).
  """

  def __init__(self, kind: str, grid: Tuple[int, int], entity_size: int = 8,
               scales: Tuple[int, ...] = ()):
    h, w = int(grid[0]), int(grid[1])
    self.kind, self.grid = kind, (h, w)
    self.num_tokens = h * w
    self.perm = None
    self.scales = ()
    if kind in ("cell", "subsample"):
      k = entity_size
      for side, name in ((h, "rows"), (w, "columns")):
        if side % k:
          raise ValueError(f"model.entity_size={k} does not divide the token grid {h}x{w} "
                           f"({name}: {side}); expected a divisor of {math.gcd(h, w)}")
      rows, cols = [], []
      if kind == "cell":   # entity (p, q): rows p k .. p k + k - 1, columns q k .. q k + k - 1.
        for p in range(h // k):
          for q in range(w // k):
            for i in range(k):
              for j in range(k):
                rows.append(p * k + i)
                cols.append(q * k + j)
      else:                # entity (a, b): rows a + i h/k, columns b + j w/k.
        sh, sw = h // k, w // k
        for a in range(sh):
          for b in range(sw):
            for i in range(k):
              for j in range(k):
                rows.append(a + i * sh)
                cols.append(b + j * sw)
      rows, cols = np.asarray(rows, np.int32), np.asarray(cols, np.int32)
      self.perm = rows * w + cols
      self.inverse = np.argsort(self.perm).astype(np.int32)
      sizes = [k * k] * (self.num_tokens // (k * k))
      self.positions = np.stack([rows, cols], -1)
    elif kind == "scale":
      if h != w:
        raise ValueError(f"model.entity='scale' needs a square token grid, got {h}x{w}")
      if not scales:
        s, out = h, []
        while True:
          out.append(s)
          if s % 2 or s == 1:
            break
          s //= 2
        scales = tuple(reversed(out))
      self.scales = check_scales(scales, "model.scales", grid=h)
      sizes = [s * s for s in self.scales]
      self.positions = np.concatenate(
          [np.stack(np.divmod(np.arange(s * s), s), -1) for s in self.scales]).astype(np.int32)
    else:
      raise ValueError(f"model.entity={kind!r}; expected one of {list(ENTITIES)}")
    ends = np.cumsum(sizes)
    self.bounds: List[Tuple[int, int]] = [(int(e - g), int(e)) for e, g in zip(ends, sizes)]
    self.num_entities = len(sizes)
    self.num_slots = int(ends[-1])
    self.entity_ids = np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)

  def to_slots(self, tokens):
    """tokens [B, N, C] (raster over the grid) -> slots [B, S, C]."""
    if self.perm is not None:
      return tokens[:, self.perm]
    b, _, c = tokens.shape
    grid = tokens.astype(jnp.float32).reshape(b, self.grid[0], self.grid[1], c)
    maps = [grid if s == self.grid[0] else area_resize(grid, s) for s in self.scales]
    return jnp.concatenate([m.reshape(b, -1, c) for m in maps], 1)

  def to_grid(self, slots):
    """slots [B, S, C] -> tokens [B, N, C] (raster; scale: the last map)."""
    if self.perm is not None:
      return slots[:, self.inverse]
    return slots[:, self.num_slots - self.num_tokens:]


def noisy_context(slots, noise, t_entity, entity_ids):
  """Noisy-context inputs and velocity targets of every slot.

  slots, noise float [B, S, C], t_entity float [B, E] (the entity's flow time, 1 = data),
  entity_ids int [S] -> (x_t = t x + (1 - t) eps, v = x - eps), both [B, S, C]."""
  t = jnp.take(t_entity, jnp.asarray(entity_ids), axis=1)                       # [B, S]
  return interpolate(slots, noise, t), slots - noise


# -- the network ---------------------------------------------------------------------------------
class TimeEmbed(nnx.Module):
  """t [...] (already times TIME_SCALE) -> [..., D]: Linear-SiLU-Linear of the sinusoid."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype=None):
    init = nnx.initializers.normal(stddev=0.02)
    self.fc1 = Dense(FREQ_DIM, dim, axes=(None, "embed"), rngs=rngs, dtype=dtype, use_bias=True,
                     init=init)
    self.fc2 = Dense(dim, dim, axes=("embed", None), rngs=rngs, dtype=dtype, use_bias=True,
                     init=init)

  def __call__(self, t):
    return self.fc2(jax.nn.silu(self.fc1(timestep_embedding(t)))).astype(jnp.float32)


class XARHead(nnx.Module):
  """The output Linear(Dd -> C): the velocity of every slot (the sampler reads the token shape
  and dtype from here; the flow itself runs through the whole network)."""

  token_dtype = jnp.float32
  sample_options = ()   # the temperature only.

  def __init__(self, dim: int, channels: int, *, rngs: nnx.Rngs, dtype=None):
    self.token_shape = (channels,)
    self.proj = Dense(dim, channels, axes=("embed", None), rngs=rngs, dtype=dtype, use_bias=True,
                      init=nnx.initializers.xavier_uniform())

  def __call__(self, h):
    return self.proj(h).astype(jnp.float32)


def decoder_config(enc: TransformerConfig, m: XARFields) -> TransformerConfig:
  dim = m.decoder_dim or enc.dim
  heads = m.decoder_heads or enc.num_heads
  mlp_dim = None if dim != enc.dim else enc.mlp_dim
  cfg = dataclasses.replace(enc, num_layers=m.decoder_layers, dim=dim, num_heads=heads,
                            num_kv_heads=None, mlp_dim=mlp_dim, cond_dim=enc.dim)
  cfg.validate()
  return cfg


_UNUSED_HEAD_FIELDS = ("width", "depth", "batch_mul")


class XAR(nnx.Module):
  """See the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = model_fields(XARFields, config)
    head = config.model.get("head", {})
    name = head.get("name", "flow") if hasattr(head, "get") else head
    if name != "flow":
      raise ValueError(f"model 'xar' is trained by flow matching through the whole network: "
                       f"model.head.name must be 'flow', got {name!r}")
    flow = read_fields(FlowFields, head, "head 'flow' (config.model.head)")
    for f in _UNUSED_HEAD_FIELDS:
      if getattr(flow, f) != getattr(FlowFields(), f):
        raise ValueError(f"model.head.{f}={getattr(flow, f)!r} does not apply to model 'xar' "
                         f"(its velocity network is the backbone, not the head's MLP); leave it "
                         f"at {getattr(FlowFields(), f)!r}")
    if m.sde and flow.solver != "euler":
      raise ValueError(f"model.sde=True samples with the Euler-Maruyama SDE: model.head.solver="
                       f"{flow.solver!r} does not apply; leave it at 'euler'")
    self.flow, self.sde = flow, m.sde
    order = config.get("order", {}).get("name", "raster")
    if order != "raster":
      raise ValueError(f"model 'xar' groups the tokens into entities itself (model.entity, "
                       f"model.entity_size): config.order.name must stay 'raster', got {order!r}")
    self.tokenizer = build_tokenizer(config)
    c = continuous_token_dim(self.tokenizer, head="flow")
    grid = tuple(self.tokenizer.grid)
    if int(np.prod(grid)) != self.tokenizer.tokens_per_image:
      raise ValueError(f"model 'xar' needs one token per grid cell: tokenizer grid {grid} but "
                       f"{self.tokenizer.tokens_per_image} tokens per image")
    self.layout = EntityLayout(m.entity, grid, m.entity_size, tuple(m.scales))
    enc = TransformerConfig.from_config(config.model.backbone)
    if not enc.adaln:
      raise ValueError("model 'xar' conditions every block on its entity's flow time: "
                       "model.backbone.adaln must be True")
    if enc.position not in ("rope2d", "none"):
      raise ValueError(f"model 'xar' adds its own learned positions: model.backbone.position="
                       f"{enc.position!r}; expected 'rope2d' or 'none'")
    enc = dataclasses.replace(enc, cond_dim=enc.dim)
    dec = decoder_config(enc, m)
    self.enc_cfg, self.dec_cfg = enc, dec
    self.channels = c
    self.num_tokens = self.tokenizer.tokens_per_image
    self.num_classes, self.null_class = m.num_classes, m.num_classes
    self.class_dropout = m.class_dropout
    s, d, dd = self.layout.num_slots, enc.dim, dec.dim
    dt = enc.compute_dtype
    std = nnx.initializers.normal(stddev=0.02)
    xavier = nnx.initializers.xavier_uniform()
    self.class_embed = Embed(m.num_classes + 1, d, rngs=rngs, axes=(None, "embed"))
    self.time_embed = TimeEmbed(d, rngs=rngs, dtype=dt)
    self.z_proj = Dense(c, d, axes=(None, "embed"), rngs=rngs, dtype=dt, use_bias=True,
                        init=xavier)
    self.z_proj_norm = RMSNorm(d, rngs=rngs, eps=1e-6)
    self.encoder_pos = make_param(rngs, std, (s, d), (None, "embed"))
    self.encoder = Transformer(enc, rngs=rngs)
    self.decoder_embed = Dense(d, dd, axes=("embed", None), rngs=rngs, dtype=dt, use_bias=True,
                               init=xavier)
    self.decoder_pos = make_param(rngs, std, (s, dd), (None, "embed"))
    self.decoder = Transformer(dec, rngs=rngs)
    self.head = XARHead(dd, c, rngs=rngs, dtype=dt)
    self.rngs = rngs

  # -- the network -------------------------------------------------------------------------------
  def condition(self, labels, t_slots):
    """labels int32 [B], t_slots float [B, L] -> cond float32 [B, L, D]."""
    cls = self.class_embed(labels).astype(jnp.float32)[:, None]
    return cls + self.time_embed(TIME_SCALE * t_slots)

  def run(self, x, labels, t_slots, start, *, caches=None, train: bool = False):
    """x float [B, L, C]: slots start .. start + L - 1 (noised), t_slots [B, L] ->
    (velocity float32 [B, L, C], caches). Without caches L = S and start = 0 (training). start
    may be traced (a loop over equal-size entities)."""
    b, l, _ = x.shape
    lay = self.layout
    ids = jnp.asarray(lay.entity_ids)
    window = lambda table: jax.lax.dynamic_slice_in_dim(table, start, l, 0)
    q_ids = jnp.broadcast_to(window(ids)[None], (b, l))
    mask = MaskSpec(kind="block_causal", q_block_ids=q_ids,
                    kv_block_ids=jnp.broadcast_to(ids[None], (b, lay.num_slots)))
    pos = jnp.broadcast_to(window(jnp.asarray(lay.positions))[None], (b, l, 2))
    cond = self.condition(labels, t_slots)
    enc_caches, dec_caches = (None, None) if caches is None else caches
    index = None if caches is None else jnp.asarray(start, jnp.int32)
    h = self.z_proj(x.astype(jnp.float32)).astype(jnp.float32)
    h = self.z_proj_norm(h + window(self.encoder_pos[...]))
    h, enc_caches = self.encoder(h, positions=pos, mask=mask, cond=cond, caches=enc_caches,
                                 cache_index=index, deterministic=not train)
    y = self.decoder_embed(h).astype(jnp.float32) + window(self.decoder_pos[...])
    y, dec_caches = self.decoder(y, positions=pos, mask=mask, cond=cond, caches=dec_caches,
                                 cache_index=index, deterministic=not train)
    v = self.head(y)
    return v, (None if caches is None else (enc_caches, dec_caches))

  def velocity(self, x_t, t_entity, labels, *, train: bool = False):
    """Teacher-forced pass: x_t [B, S, C] (every entity noised at its own time), t_entity
    [B, E], labels [B] -> velocity float32 [B, S, C]."""
    t = jnp.take(t_entity, jnp.asarray(self.layout.entity_ids), axis=1)
    return self.run(x_t, labels, t, 0, train=train)[0]

  # -- training ----------------------------------------------------------------------------------
  def batch_tokens(self, batch):
    for key in ("latents", "tokens"):
      if key in batch:
        return batch[key]
    return self.tokenizer.encode(batch["image"])

  def loss(self, batch: Dict[str, jax.Array], *, train: bool
           ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    tokens = self.batch_tokens(batch)
    b = tokens.shape[0]
    check_targets(tokens, self.head.token_shape, jnp.float32, (b, self.num_tokens), "flow")
    labels = batch["label"].astype(jnp.int32)
    if train and self.class_dropout > 0:
      keep = jax.random.uniform(self.rngs.dropout(), labels.shape) >= self.class_dropout
      labels = jnp.where(keep, labels, self.null_class)
    # Evaluation draws (t, eps) from a fixed key: a deterministic test loss.
    kt, ke = jax.random.split(self.rngs.sample() if train else jax.random.key(0))
    slots = self.layout.to_slots(tokens.astype(jnp.float32))
    t = draw_times(kt, (b, self.layout.num_entities), self.flow)
    noise = jax.random.normal(ke, slots.shape, jnp.float32)
    x_t, target = noisy_context(slots, noise, t, self.layout.entity_ids)
    v = self.velocity(x_t, t, labels, train=train)
    per_slot = jnp.square(v - target).mean(-1)                                   # [B, S]
    w = jnp.ones_like(per_slot)
    if "mask" in batch:  # padded evaluation batches
      w = w * batch["mask"][:, None].astype(jnp.float32)
    loss = (per_slot * w).sum() / jnp.maximum(w.sum(), 1.0)
    return loss, token_metrics(None, loss, per_slot, slots, w)

  # -- sampling ----------------------------------------------------------------------------------
  def init_cache(self, batch: int):
    s = self.layout.num_slots
    return (self.encoder.init_cache(batch, s, jnp.float32),
            self.decoder.init_cache(batch, s, jnp.float32))

  def decode_entity(self, k, x, t, labels, caches):
    """Entity k at flow time t (scalar or [B]): x [B, G_k, C] -> (velocity [B, G_k, C], caches
    with the entity's keys and values written at its slots). Entities < k must be in the caches
    (fed clean, t = 1); later slots are hidden by the mask. k may be traced when every entity
    has the same size (`equal_entities`)."""
    if isinstance(k, int):
      a, e = self.layout.bounds[k]
    else:
      g = self.layout.bounds[0][1]
      a, e = k * g, k * g + g
    g = x.shape[1]
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1, 1)
                         if jnp.ndim(t) else jnp.asarray(t, jnp.float32), (x.shape[0], g))
    return self.run(x, labels, t, a, caches=caches)

  @property
  def equal_entities(self) -> bool:
    return len({e - a for a, e in self.layout.bounds}) == 1

  def default_sampler(self) -> str:
    return "next_entity"


@MODELS.register("xar", fields=XARFields)
def _build(config, *, rngs):
  return XAR(config, rngs=rngs)
