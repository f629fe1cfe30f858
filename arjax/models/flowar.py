"""FlowAR: next-scale prediction with per-scale flow matching (Ren et al. 2024, "FlowAR:
Scale-wise Autoregressive Image Generation Meets Flow Matching"). The official repository
(OliverRensu/FlowAR) held only a README when read, so the layout below follows the paper's text;
where it is silent the choice is named here.

**Scales.** Any continuous latent [B, H*W, Ct] (a VAE's, tokenizer with token_dim > 0) on a
square grid; `order.scales` (1, 2, 4, 8, 16 at 16 x 16) must end at the grid. The map of
scale k is a plain downsample of the finest latent, s_k = area(x, h_k) (area averaging, i.e.
F.interpolate(mode='area'): 2 x 2 mean pooling per halving; the paper says only "downsample").

**AR transformer** (VAR's blocks, reused from arjax.models.var: adaLN from the class, q/k
L2-normalised, block-causal over scales through the 'scales' order's mask). The slots:

  scale 1:     class embedding + a learned start position
  scale k > 1: Linear(Up(s_{k-1}, h_k))   Up: PyTorch's bicubic (a = -0.75), FlexVAR's resampling
  every slot:  + absolute position (pos_embed [N, C]) + level embedding of its scale

and the output of scale k's slots, after a LayerNorm without affine, is the semantics
shat_k [B, h_k^2, C] (the input of scale k is the previous scale only, not a running sum).

**Per-scale flow matching head** (`SpatialFlowHead`): a small transformer over one scale's tokens
(attention inside the scale only), input Linear(F_t), F_t = t s_k + (1 - t) F0 (F0 ~ N(0, I), t
from noise at 0 to data at 1: the library's convention, arjax.heads.flow, the same as FlowAR's),
target V = s_k - F0, MSE over channels, each of the N slots weighted 1/N (one t per image and
scale). Spatial adaLN: per block, position-wise

  (alpha1, alpha2, beta1, beta2, gamma1, gamma2) = Linear(SiLU(shat + TimeEmbed(1000 t)))
  F'  = F  + alpha1 * Attn((1 + gamma1) LN(F)  + beta1)
  F'' = F' + alpha2 * MLP ((1 + gamma2) LN(F') + beta2)

(the paper writes gamma LN + beta; the 1 + gamma offset is DiT's parametrisation of the same
map), then a final adaLN LayerNorm and Linear(Dh -> Ct). Larger models of the paper add
cross-attention to shat; not built here.

**Sampling** (sampler 'next_scale', its continuous path): per scale, one KV-cached AR pass gives
shat_k; the scale's ODE dF/dt = v(F, t | shat_k) is integrated from temperature * F0 at t = 0 to
1 (Euler or Heun, `model.head.num_sampling_steps`), CFG on the velocity v_u + w (v_c - v_u);
the result, Up(., h_{k+1}), is the next pass's input. The final scale is the latent the
tokenizer decodes.

Legend: B batch, N = sum h_k^2 slots, K scales, C AR width, Dh head width, Ct latent channels,
L slots of one scale.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from arjax.heads.base import check_targets, continuous_token_dim, token_metrics
from arjax.heads.flow import TIME_SCALE, draw_times, interpolate
from arjax.heads.spatial_flow import SpatialFlowFields
from arjax.kernels import attention
from arjax.kernels.masks import MaskSpec
from arjax.models.registry import MODELS, GeneratorFields, model_fields
from arjax.models.var import VarBlock, _Linear, _normal, layer_norm, run_scale
from arjax.models.xar import TimeEmbed
from arjax.nn.layers import make_param
from arjax.orders import register_support
from arjax.orders.base import order_fields
from arjax.orders.scales import ScaleFields, ScaleOrder, check_scales
from arjax.registry import ranged, read_fields
from arjax.tokenizers import build_tokenizer
from arjax.tokenizers.resample import area_resize, bicubic_resize

HEAD_NAME = "spatial_flow"


@dataclasses.dataclass(frozen=True)
class FlowARFields(GeneratorFields):
  """`config.model` of 'flowar' (scales: config.order.scales, order 'scales'; sub-node
  model.head, which must be 'spatial_flow')."""
  SUBNODES = {"head": None}
  depth: int = 12                 # AR blocks.
  width: int = 0                  # C (0: 64 * depth).
  num_heads: int = 0              # AR heads (0: C / 64).
  mlp_ratio: float = 4.0          # MLP width / C (AR and head blocks).
  drop_path: float = ranged(0.0, lo=0.0, hi=1.0, hi_open=True)  # largest AR drop-path rate.
  norm_eps: float = 1e-6          # LayerNorm epsilon.
  init_std: float = -1.0          # init std of linears (< 0: sqrt(1 / (3 C)), VAR's).


class SpatialAdaLNBlock(nnx.Module):
  """x [B, L, Dh], cond [B, L, C] (position-wise) -> [B, L, Dh] (module docstring)."""

  def __init__(self, dh: int, c: int, heads: int, mlp: int, *, rngs, std: float, eps: float):
    self.dh, self.heads, self.eps = dh, heads, eps
    self.ada = _Linear(c, 6 * dh, rngs=rngs, axes=("embed", "mlp"), std=std * 0.5)
    self.qkv = _Linear(dh, 3 * dh, rngs=rngs, axes=("embed", "mlp"), std=std)
    self.proj = _Linear(dh, dh, rngs=rngs, axes=("mlp", "embed"), std=std)
    self.fc1 = _Linear(dh, mlp, rngs=rngs, axes=("embed", "mlp"), std=std)
    self.fc2 = _Linear(mlp, dh, rngs=rngs, axes=("mlp", "embed"), std=std)

  def modulation(self, cond):
    """cond [B, L, C] -> six [B, L, Dh]: alpha1, alpha2, beta1, beta2, gamma1, gamma2."""
    ada = self.ada(jax.nn.silu(cond)).reshape(cond.shape[:2] + (6, self.dh))
    return tuple(ada[:, :, i] for i in range(6))

  def __call__(self, x, cond, mask: MaskSpec):
    a1, a2, b1, b2, g1, g2 = self.modulation(cond)
    b, l, d = x.shape
    kh = d // self.heads
    h = layer_norm(x, self.eps) * (1.0 + g1) + b1
    q, k, v = jnp.split(self.qkv(h).reshape(b, l, 3, self.heads, kh), 3, axis=2)
    att = attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], mask, scale=1.0 / math.sqrt(kh))
    x = x + a1 * self.proj(att.reshape(b, l, d))
    h = layer_norm(x, self.eps) * (1.0 + g2) + b2
    return x + a2 * self.fc2(jax.nn.gelu(self.fc1(h), approximate=True))


class SpatialFlowHead(nnx.Module):
  """The per-scale velocity network: x_t [B, L, Ct], t [B, L] (flow time of each slot), shat
  [B, L, C], mask (attention inside a scale) -> velocity float32 [B, L, Ct]."""

  token_dtype = jnp.float32
  sample_options = ()

  def __init__(self, f: SpatialFlowFields, c: int, channels: int, *, rngs, std: float,
               eps: float, mlp_ratio: float):
    dh = f.width or c
    heads = f.num_heads or max(dh // 64, 1)
    if dh % heads:
      raise ValueError(f"model.head.width={dh} is not divisible by model.head.num_heads={heads}")
    self.fields, self.channels, self.eps, self.dh = f, channels, eps, dh
    self.token_shape = (channels,)
    self.time_embed = TimeEmbed(c, rngs=rngs)
    self.x_embed = _Linear(channels, dh, rngs=rngs, axes=(None, "embed"), std=std)
    self.blocks = nnx.List([SpatialAdaLNBlock(dh, c, heads, int(round(dh * mlp_ratio)),
                                              rngs=rngs, std=std, eps=eps)
                            for _ in range(f.depth)])
    self.final_ada = _Linear(c, 2 * dh, rngs=rngs, axes=("embed", "mlp"), std=std * 0.5)
    self.out = _Linear(dh, channels, rngs=rngs, axes=("embed", None), std=std)

  def condition(self, shat, t):
    """shat [B, L, C], t [B, L] -> shat + TimeEmbed(1000 t) [B, L, C]."""
    return shat.astype(jnp.float32) + self.time_embed(TIME_SCALE * t)

  def __call__(self, x_t, t, shat, mask: MaskSpec):
    cond = self.condition(shat, t)
    h = self.x_embed(x_t.astype(jnp.float32))
    for blk in self.blocks:
      h = blk(h, cond, mask)
    ada = self.final_ada(jax.nn.silu(cond)).reshape(cond.shape[:2] + (2, self.dh))
    h = layer_norm(h, self.eps) * (1.0 + ada[:, :, 0]) + ada[:, :, 1]
    return self.out(h).astype(jnp.float32)


def pyramid(latent, scales):
  """latent [B, H, W, Ct] -> [s_1 .. s_K], s_k = area(latent, h_k) [B, h_k, h_k, Ct] (the last
  is the latent itself)."""
  return [latent if s == latent.shape[1] else area_resize(latent, s) for s in scales]


def upsample(x, side: int):
  """[B, h, h, Ct] -> [B, side, side, Ct], PyTorch's bicubic (Up of the paper)."""
  return bicubic_resize(x, side)


class FlowAR(nnx.Module):
  """See the module docstring."""

  continuous_scales = True   # the 'next_scale' sampler's continuous path.

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = model_fields(FlowARFields, config)
    head = config.model.get("head", {})
    name = head.get("name", HEAD_NAME) if hasattr(head, "get") else head
    if name != HEAD_NAME:
      raise ValueError(f"model 'flowar' predicts each scale with its spatial-adaLN flow head: "
                       f"model.head.name must be {HEAD_NAME!r}, got {name!r}")
    hf = read_fields(SpatialFlowFields, head, f"head {HEAD_NAME!r} (config.model.head)")
    if m.token_dropout:
      raise ValueError(f"model 'flowar' has no token dropout (its inputs are upsampled scales): "
                       f"model.token_dropout={m.token_dropout} must be 0")
    self.tokenizer = build_tokenizer(config)
    try:
      ct = continuous_token_dim(self.tokenizer, head=HEAD_NAME)
    except ValueError as e:
      raise ValueError(f"model 'flowar' (continuous latents) with tokenizer "
                       f"{config.tokenizer.name!r}: {e}") from None
    order_name = config.get("order", {}).get("name", "raster")
    if order_name != "scales":
      raise ValueError(f"model 'flowar' runs order 'scales' (order.scales), got "
                       f"order.name={order_name!r}")
    of = order_fields(ScaleFields, config, "scales")
    if of.markovian:
      raise ValueError("model 'flowar' is block-causal over scales: order.markovian must be False")
    grid = tuple(int(g) for g in self.tokenizer.grid)
    if len(grid) != 2 or grid[0] != grid[1] or grid[0] * grid[1] != \
        self.tokenizer.tokens_per_image:
      raise ValueError(f"model 'flowar' needs a square latent grid with one token per cell: "
                       f"tokenizer {config.tokenizer.name!r} grid {grid}, "
                       f"{self.tokenizer.tokens_per_image} tokens per image")
    check_scales(of.scales, "order.scales", grid=grid[0])
    self.order = ScaleOrder(of.scales)
    c = m.width or 64 * m.depth
    heads = m.num_heads or max(c // 64, 1)
    if c % heads:
      raise ValueError(f"model.width={c} is not divisible by model.num_heads={heads}")
    self.width, self.num_heads, self.depth = c, heads, m.depth
    self.channels, self.grid = ct, grid
    self.num_classes = self.null_class = m.num_classes
    self.class_dropout = m.class_dropout
    self.norm_eps = m.norm_eps
    self.num_tokens = self.tokenizer.tokens_per_image
    self.num_slots = self.order.num_tokens
    self.scales = self.order.scales
    self.flow = hf
    std = m.init_std if m.init_std > 0 else math.sqrt(1.0 / c / 3.0)
    self.word_embed = _Linear(ct, c, rngs=rngs, axes=(None, "embed"), std=std)
    self.class_embed = make_param(rngs, _normal(std), (m.num_classes + 1, c), (None, "embed"))
    self.pos_start = make_param(rngs, _normal(std), (self.scales[0] ** 2, c), (None, "embed"))
    self.pos_embed = make_param(rngs, _normal(std), (self.num_slots, c), (None, "embed"))
    self.level_embed = make_param(rngs, _normal(std), (len(self.scales), c), (None, "embed"))
    rates = [m.drop_path * i / max(m.depth - 1, 1) for i in range(m.depth)]
    self.drop_path = m.drop_path
    self.blocks = nnx.List([VarBlock(c, heads, int(round(c * m.mlp_ratio)), rngs=rngs, std=std,
                                     depth=m.depth, drop_path=rates[i], eps=m.norm_eps)
                            for i in range(m.depth)])
    self.head = SpatialFlowHead(hf, c, ct, rngs=rngs, std=std, eps=m.norm_eps,
                                mlp_ratio=m.mlp_ratio)
    self.rngs = rngs

  # -- teacher forcing ---------------------------------------------------------------------------
  def latent_grid(self, tokens):
    """tokens [B, H*W, Ct] -> [B, H, W, Ct] float32."""
    return tokens.astype(jnp.float32).reshape((tokens.shape[0],) + self.grid + (self.channels,))

  def teacher(self, tokens):
    """tokens [B, H*W, Ct] -> (inputs [B, N - h_1^2, Ct]: Up(s_{k-1}, h_k) of scales 2..K,
    targets [B, N, Ct]: s_1 .. s_K), scales concatenated, each map row-major."""
    maps = pyramid(self.latent_grid(tokens), self.scales)
    b = tokens.shape[0]
    flat = lambda x: x.reshape(b, -1, self.channels)
    inputs = [flat(upsample(maps[k - 1], s)) for k, s in enumerate(self.scales) if k > 0]
    return jnp.concatenate(inputs, 1), jnp.concatenate([flat(x) for x in maps], 1)

  # -- the AR transformer ------------------------------------------------------------------------
  def cond(self, labels):
    return jnp.take(self.class_embed[...], labels, axis=0)                        # [B, C]

  def features(self, inputs, labels, *, train: bool = False, key=None):
    """inputs [B, N - h_1^2, Ct], labels [B] -> shat [B, N, C] (one block-causal pass)."""
    cond = self.cond(labels)
    sos = cond[:, None] + self.pos_start[...][None]
    x = jnp.concatenate([sos, self.word_embed(inputs.astype(jnp.float32))], 1)
    lvl = jnp.take(self.level_embed[...], self.order.level_ids, axis=0)
    x = x + (lvl + self.pos_embed[...])[None]
    mask = self.order.train_mask()
    keys = [None] * self.depth if key is None else list(jax.random.split(key, self.depth))
    for blk, k in zip(self.blocks, keys):
      x, _ = blk(x, cond, mask, key=k if train else None)
    return layer_norm(x, self.norm_eps)

  def velocity(self, x_t, t_slots, shat):
    """All scales at once: x_t [B, N, Ct], t_slots [B, N], shat [B, N, C] -> [B, N, Ct]."""
    ids = self.order.level_ids_np  # head attention: inside a slot's own scale (block-diagonal).
    mask = MaskSpec(kind="dense", dense=jnp.asarray((ids[:, None] == ids[None, :])[None, None]))
    return self.head(x_t, t_slots, shat, mask)

  def forward(self, tokens, labels, t, noise, *, train: bool = False, key=None):
    """tokens [B, H*W, Ct], labels [B], t [B, K], noise [B, N, Ct] -> (velocity [B, N, Ct],
    target V = s - F0 [B, N, Ct])."""
    inputs, targets = self.teacher(tokens)
    shat = self.features(inputs, labels, train=train, key=key)
    t_slots = jnp.take(t, self.order.level_ids, axis=1)                          # [B, N]
    x_t = interpolate(targets, noise, t_slots)
    return self.velocity(x_t, t_slots, shat), targets - noise

  def batch_tokens(self, batch):
    if "tokens" in batch:
      return batch["tokens"]
    return self.tokenizer.encode(batch["image"])

  def loss(self, batch: Dict[str, jax.Array], *, train: bool
           ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    tokens = self.batch_tokens(batch)
    b = tokens.shape[0]
    check_targets(tokens, (self.channels,), jnp.float32, (b, self.num_tokens), "flowar")
    labels = batch["label"].astype(jnp.int32)
    if train and self.class_dropout > 0:
      keep = jax.random.uniform(self.rngs.dropout(), labels.shape) >= self.class_dropout
      labels = jnp.where(keep, labels, self.null_class)
    key = self.rngs.dropout() if train and self.drop_path > 0 else None
    # Evaluation draws (t, F0) from a fixed key: a deterministic test loss.
    kt, ke = jax.random.split(self.rngs.sample() if train else jax.random.key(0))
    mul = self.flow.batch_mul
    inputs, targets = self.teacher(tokens)
    shat = self.features(inputs, labels, train=train, key=key)
    rep = lambda x: jnp.concatenate([x] * mul, 0) if mul > 1 else x
    shat, targets = rep(shat), rep(targets)
    t = draw_times(kt, (b * mul, len(self.scales)), self.flow)
    noise = jax.random.normal(ke, targets.shape, jnp.float32)
    t_slots = jnp.take(t, self.order.level_ids, axis=1)
    v = self.velocity(interpolate(targets, noise, t_slots), t_slots, shat)
    per_slot = jnp.square(v - (targets - noise)).mean(-1).reshape(mul, b, -1).mean(0)  # [B, N]
    w = jnp.ones_like(per_slot)
    if "mask" in batch:  # padded evaluation batches
      w = w * batch["mask"][:, None].astype(jnp.float32)
    loss = (per_slot * w).sum() / jnp.maximum(w.sum(), 1.0)
    return loss, token_metrics(None, loss, per_slot, targets[:b], w)

  # -- decoding ----------------------------------------------------------------------------------
  def init_cache(self, batch: int, dtype=jnp.float32,
                 num_tokens: Optional[int] = None) -> List[Tuple[jax.Array, jax.Array]]:
    """Per AR block (k, v) zeros [B, N, H, Kh]."""
    n = self.num_slots if num_tokens is None else num_tokens
    shape = (batch, n, self.num_heads, self.width // self.num_heads)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(self.depth)]

  def decode_scale(self, k: int, inputs: Optional[jax.Array], labels, caches, order=None):
    """Scale k (from 0, static): inputs [B, h_k^2, Ct] (Up of scale k-1; None at k = 0),
    labels [B] -> (shat_k [B, h_k^2, C], caches with the scale's keys and values written)."""
    del order
    x, caches, _ = run_scale(self, k, inputs, labels, caches)
    return layer_norm(x, self.norm_eps), caches

  def scale_velocity(self, x, t, shat):
    """One scale: x [B, L, Ct], t scalar, shat [B, L, C] -> velocity [B, L, Ct]."""
    b, l = x.shape[:2]
    mask = MaskSpec(kind="bidirectional", kv_length=jnp.full((1,), l, jnp.int32))
    return self.head(x, jnp.full((b, l), t, jnp.float32), shat, mask)

  def next_input(self, x, k: int):
    """Scale k's drawn map [B, h_k^2, Ct] -> the input of scale k + 1 [B, h_{k+1}^2, Ct]."""
    b, s, nxt = x.shape[0], self.scales[k], self.scales[k + 1]
    up = upsample(x.reshape(b, s, s, self.channels), nxt)
    return up.reshape(b, nxt * nxt, self.channels)

  def default_sampler(self) -> str:
    return "next_scale"


register_support("flowar", mask_kinds=("block",), orders=("scales",))


@MODELS.register("flowar", fields=FlowARFields)
def _build(config, *, rngs):
  return FlowAR(config, rngs=rngs)
