"""VQGAN-style convolutional encoder and decoder (NHWC), as in every CNN image tokenizer.

The layout is the one of VQGAN (Esser et al. 2021, "Taming Transformers") and the latent
diffusion autoencoders (Rombach et al. 2022), reused unchanged by LlamaGen's VQ-16 (Sun et al.
2024), VAR's multi-scale VQ-VAE (Tian et al. 2024) and MAR's KL-16 (Li et al. 2024):

  encoder: conv_in -> per level [num_res_blocks x (ResBlock (+ attention at the lowest level))
           + Downsample except at the last level] -> mid [ResBlock, Attention, ResBlock]
           -> GroupNorm -> swish -> conv_out (z_channels)
  decoder: conv_in -> mid -> per level, lowest first [(num_res_blocks + 1) x (ResBlock
           (+ attention at the lowest level)) + Upsample except at the first level]
           -> GroupNorm -> swish -> conv_out (image channels)

Channels at level i are ch * ch_mult[i]; there are len(ch_mult) - 1 halvings, so ch_mult of
length 3, 4, 5 gives downsampling 4, 8, 16. Downsampling pads right and bottom by one and
convolves 3x3 with stride 2 (VQGAN's asymmetric padding); upsampling repeats pixels and
convolves 3x3. GroupNorm uses 32 groups and eps 1e-6 as the papers; tiny configs can lower the
group count. Attention is single-head over all h*w positions with 1x1 q/k/v/out projections.

Legend: B batch, H/W image size, C channels, h/w latent grid (H/f, W/f), Z latent channels.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from arjax.nn.layers import Axes, make_param

# PyTorch's default conv/linear initialisation (kaiming_uniform with a = sqrt(5)) is a uniform
# distribution of variance 1/(3 fan_in); the published tokenizers were trained from it.
_TORCH_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_CONV_AXES: Axes = (None, None, "embed", "mlp")


class Conv(nnx.Module):
  """2D convolution with bias. x [B, H, W, Cin] -> [B, H', W', Cout]; kernel [k, k, Cin, Cout].

  `padding` is 'SAME', 'VALID' or ((top, bottom), (left, right)).
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *,
               rngs: nnx.Rngs, stride: int = 1, padding="SAME", axes: Axes = _CONV_AXES,
               bias: bool = True, init=None):
    self.kernel = make_param(rngs, init or _TORCH_INIT,
                             (kernel_size, kernel_size, in_channels, out_channels), axes)
    self.bias = (make_param(rngs, nnx.initializers.zeros, (out_channels,), (None,))
                 if bias else None)
    self.stride = stride
    self.padding = padding
    self.in_channels, self.out_channels = in_channels, out_channels

  def __call__(self, x, kernel: Optional[jax.Array] = None):
    """`kernel` replaces the stored one (used to differentiate w.r.t. the last layer only)."""
    w = self.kernel[...] if kernel is None else kernel
    if x.shape[-1] != w.shape[2]:
      raise ValueError(f"conv expects {w.shape[2]} input channels, got shape {tuple(x.shape)}")
    y = jax.lax.conv_general_dilated(
        x, w.astype(x.dtype), (self.stride, self.stride), self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y


class Linear(nnx.Module):
  """y = x W + b over the last axis (any rank); W [in, out]."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs,
               axes: Axes = ("embed", "mlp"), bias: bool = True, init=None):
    self.kernel = make_param(rngs, init or _TORCH_INIT, (in_features, out_features), axes)
    self.bias = (make_param(rngs, nnx.initializers.zeros, (out_features,), (None,))
                 if bias else None)

  def __call__(self, x, kernel: Optional[jax.Array] = None):
    w = self.kernel[...] if kernel is None else kernel
    y = jnp.dot(x, w.astype(x.dtype))
    return y if self.bias is None else y + self.bias[...].astype(y.dtype)


class GroupNorm(nnx.Module):
  """GroupNorm (Wu & He 2018) over the channels of [..., H, W, C], statistics in float32."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs, num_groups: int = 32, eps: float = 1e-6):
    if channels % num_groups:
      raise ValueError(f"GroupNorm: {channels} channels are not divisible by num_groups="
                       f"{num_groups} (lower model.num_groups or change ch/ch_mult)")
    self.scale = make_param(rngs, nnx.initializers.ones, (channels,), (None,))
    self.bias = make_param(rngs, nnx.initializers.zeros, (channels,), (None,))
    self.num_groups, self.eps = num_groups, eps

  def __call__(self, x):
    dtype = x.dtype
    g = self.num_groups
    xg = x.astype(jnp.float32).reshape(x.shape[:-1] + (g, x.shape[-1] // g))
    axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)   # spatial dims and channels in group
    mean = xg.mean(axis=axes, keepdims=True)
    var = jnp.square(xg - mean).mean(axis=axes, keepdims=True)
    xg = (xg - mean) * jax.lax.rsqrt(var + self.eps)
    y = xg.reshape(x.shape) * self.scale[...] + self.bias[...]
    return y.astype(dtype)


def swish(x):
  return x * jax.nn.sigmoid(x)


class ResBlock(nnx.Module):
  """GN -> swish -> conv3x3 -> GN -> swish -> dropout -> conv3x3, plus a (1x1) shortcut."""

  def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs, num_groups: int,
               dropout: float = 0.0):
    self.norm1 = GroupNorm(in_channels, rngs=rngs, num_groups=num_groups)
    self.conv1 = Conv(in_channels, out_channels, 3, rngs=rngs)
    self.norm2 = GroupNorm(out_channels, rngs=rngs, num_groups=num_groups)
    self.conv2 = Conv(out_channels, out_channels, 3, rngs=rngs)
    self.shortcut = (Conv(in_channels, out_channels, 1, rngs=rngs)
                     if in_channels != out_channels else None)
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

  def __call__(self, x, *, train: bool = False):
    h = self.conv1(swish(self.norm1(x)))
    h = swish(self.norm2(h))
    if self.dropout is not None:
      h = self.dropout(h, deterministic=not train)
    h = self.conv2(h)
    return (x if self.shortcut is None else self.shortcut(x)) + h


class AttnBlock(nnx.Module):
  """Single-head self-attention over all h*w positions, residual. [B, h, w, C] -> same."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs, num_groups: int):
    self.norm = GroupNorm(channels, rngs=rngs, num_groups=num_groups)
    self.q = Conv(channels, channels, 1, rngs=rngs)
    self.k = Conv(channels, channels, 1, rngs=rngs)
    self.v = Conv(channels, channels, 1, rngs=rngs)
    self.proj = Conv(channels, channels, 1, rngs=rngs)

  def __call__(self, x, *, train: bool = False):
    del train
    b, h, w, c = x.shape
    y = self.norm(x)
    q, k, v = (f(y).reshape(b, h * w, c) for f in (self.q, self.k, self.v))
    logits = jnp.einsum("bic,bjc->bij", q, k).astype(jnp.float32) * c ** -0.5
    attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bij,bjc->bic", attn, v).reshape(b, h, w, c)
    return x + self.proj(out)


class Downsample(nnx.Module):
  """Pad right/bottom by one, conv3x3 stride 2: [B, H, W, C] -> [B, H/2, W/2, C] (H even)."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.conv = Conv(channels, channels, 3, rngs=rngs, stride=2, padding=((0, 1), (0, 1)))

  def __call__(self, x):
    return self.conv(x)


class Upsample(nnx.Module):
  """Nearest-neighbour x2 then conv3x3: [B, h, w, C] -> [B, 2h, 2w, C]."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.conv = Conv(channels, channels, 3, rngs=rngs)

  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return self.conv(x)


@dataclasses.dataclass(frozen=True)
class ConvConfig:
  """Shape of a VQGAN-style encoder/decoder pair (from `config.model`)."""
  ch: int = 128                            # base channel count.
  ch_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)  # per-level multipliers; len - 1 halvings.
  num_res_blocks: int = 2                  # encoder blocks per level (decoder: one more).
  enc_attn: bool = True                    # attention after each block of the lowest level.
  dec_attn: bool = True                    # the same in the decoder.
  mid_attn: bool = True                    # attention between the two middle blocks.
  num_groups: int = 32                     # GroupNorm groups.
  dropout: float = 0.0                     # dropout inside residual blocks.

  @classmethod
  def from_config(cls, m: ml_collections.ConfigDict) -> "ConvConfig":
    return cls(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
               enc_attn=m.enc_attn, dec_attn=m.dec_attn, mid_attn=m.mid_attn,
               num_groups=m.num_groups, dropout=m.dropout)

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.ch_mult) - 1)


def check_image_size(height: int, width: int, factor: int, what: str = "encoder") -> None:
  if height % factor or width % factor:
    raise ValueError(f"image size {height}x{width} is not divisible by the {what}'s "
                     f"downsampling factor {factor}; use images whose sides are multiples of "
                     f"{factor} or change model.ch_mult / model.patch_size")


class ConvEncoder(nnx.Module):
  """[B, H, W, C] -> [B, H/f, W/f, Z], f = 2 ** (len(ch_mult) - 1)."""

  def __init__(self, cfg: ConvConfig, in_channels: int, z_channels: int, *, rngs: nnx.Rngs):
    if len(cfg.ch_mult) < 1:
      raise ValueError("model.ch_mult must have at least one level")
    self.cfg = cfg
    kw = dict(rngs=rngs, num_groups=cfg.num_groups)
    self.conv_in = Conv(in_channels, cfg.ch, 3, rngs=rngs, axes=(None, None, None, "mlp"))
    levels = []
    c_in = cfg.ch
    last = len(cfg.ch_mult) - 1
    for i, mult in enumerate(cfg.ch_mult):
      c_out = cfg.ch * mult
      blocks, attns = [], []
      for _ in range(cfg.num_res_blocks):
        blocks.append(ResBlock(c_in, c_out, dropout=cfg.dropout, **kw))
        c_in = c_out
        if i == last and cfg.enc_attn:
          attns.append(AttnBlock(c_in, **kw))
      down = Downsample(c_in, rngs=rngs) if i != last else None
      levels.append(_Level(nnx.List(blocks), nnx.List(attns), down))
    self.levels = nnx.List(levels)
    self.mid = _Mid(c_in, cfg, rngs=rngs)
    self.norm_out = GroupNorm(c_in, **kw)
    self.conv_out = Conv(c_in, z_channels, 3, rngs=rngs, axes=(None, None, "mlp", None))
    self.downsample = cfg.downsample

  def __call__(self, x, *, train: bool = False):
    check_image_size(x.shape[1], x.shape[2], self.downsample)
    h = self.conv_in(x)
    for level in self.levels:
      h = level(h, train=train)
    h = self.mid(h, train=train)
    return self.conv_out(swish(self.norm_out(h)))


class ConvDecoder(nnx.Module):
  """[B, h, w, Z] -> [B, h*f, w*f, C].

  `features(z)` returns the activations before the last conv and `project(h, kernel)` applies
  that conv, so the adaptive GAN weight can differentiate w.r.t. the last layer alone.
  """

  def __init__(self, cfg: ConvConfig, out_channels: int, z_channels: int, *, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(rngs=rngs, num_groups=cfg.num_groups)
    c_in = cfg.ch * cfg.ch_mult[-1]
    self.conv_in = Conv(z_channels, c_in, 3, rngs=rngs, axes=(None, None, None, "mlp"))
    self.mid = _Mid(c_in, cfg, rngs=rngs)
    levels = []
    last = len(cfg.ch_mult) - 1
    for i in reversed(range(len(cfg.ch_mult))):
      c_out = cfg.ch * cfg.ch_mult[i]
      blocks, attns = [], []
      for _ in range(cfg.num_res_blocks + 1):
        blocks.append(ResBlock(c_in, c_out, dropout=cfg.dropout, **kw))
        c_in = c_out
        if i == last and cfg.dec_attn:
          attns.append(AttnBlock(c_in, **kw))
      up = Upsample(c_in, rngs=rngs) if i != 0 else None
      levels.append(_Level(nnx.List(blocks), nnx.List(attns), up))
    self.levels = nnx.List(levels)
    self.norm_out = GroupNorm(c_in, **kw)
    self.conv_out = Conv(c_in, out_channels, 3, rngs=rngs, axes=(None, None, "mlp", None))
    self.upsample = cfg.downsample

  def features(self, z, *, train: bool = False):
    h = self.mid(self.conv_in(z), train=train)
    for level in self.levels:
      h = level(h, train=train)
    return swish(self.norm_out(h))

  @property
  def last_kernel(self) -> jax.Array:
    return self.conv_out.kernel[...]

  def project(self, h, kernel: Optional[jax.Array] = None):
    return self.conv_out(h, kernel)

  def __call__(self, z, *, train: bool = False):
    return self.project(self.features(z, train=train))


class _Level(nnx.Module):
  """Residual blocks (each optionally followed by attention) and an optional resampler."""

  def __init__(self, blocks: Sequence[nnx.Module], attns: Sequence[nnx.Module], resample):
    self.blocks = blocks
    self.attns = attns
    self.resample = resample

  def __call__(self, h, *, train: bool):
    for j, block in enumerate(self.blocks):
      h = block(h, train=train)
      if len(self.attns):
        h = self.attns[j](h, train=train)
    return h if self.resample is None else self.resample(h)


class _Mid(nnx.Module):

  def __init__(self, channels: int, cfg: ConvConfig, *, rngs: nnx.Rngs):
    kw = dict(rngs=rngs, num_groups=cfg.num_groups)
    self.block1 = ResBlock(channels, channels, dropout=cfg.dropout, **kw)
    self.attn = AttnBlock(channels, **kw) if cfg.mid_attn else None
    self.block2 = ResBlock(channels, channels, dropout=cfg.dropout, **kw)

  def __call__(self, h, *, train: bool):
    h = self.block1(h, train=train)
    if self.attn is not None:
      h = self.attn(h, train=train)
    return self.block2(h, train=train)
