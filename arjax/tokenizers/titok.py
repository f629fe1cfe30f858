"""1D-token encoder and decoder: learned latent queries read the patch grid (TiTok, Yu et al.
2024, "An Image is Worth 32 Tokens for Reconstruction and Generation"). Only TiTok's scheme is
here: Hita's holistic tokenizer also starts from learned queries but keeps the patch tokens
beside them, uses causal attention in the tokenizer and adds a fusion module, none of which this
module has.

  encoder: patchify (p x p) -> linear -> + position -> concat N learned latent queries
           -> transformer (bidirectional) -> the N latent outputs -> LayerNorm -> linear
           -> [B, 1, N, Z]   (a 1 x N "grid", so every quantizer reads it unchanged)
  decoder: [B, 1, N, Z] -> linear -> concat (H/p)(W/p) learned mask tokens (+ position)
           -> transformer -> the patch outputs -> LayerNorm -> linear to p*p*C -> unpatchify

The tokens carry no 2D position: what a token describes is learned. Blocks are pre-LN ViT
blocks (multi-head self-attention, GELU MLP of 4x width).

Legend: B batch, H/W image size, C channels, p patch size, P = (H/p)(W/p) patches, N latent
tokens, D width, Z latent channels.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from arjax.nn.layers import make_param
from arjax.tokenizers.conv import Linear, check_image_size


class Block(nnx.Module):
  """Pre-LN transformer block over [B, L, D]."""

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"model.titok.width={dim} is not divisible by model.titok.num_heads="
                       f"{num_heads}")
    self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
    self.qkv = Linear(dim, 3 * dim, rngs=rngs)
    self.proj = Linear(dim, dim, rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
    self.fc1 = Linear(dim, 4 * dim, rngs=rngs)
    self.fc2 = Linear(4 * dim, dim, rngs=rngs, axes=("mlp", "embed"))
    self.num_heads = num_heads

  def __call__(self, x):
    b, l, d = x.shape
    h = self.num_heads
    q, k, v = jnp.split(self.qkv(self.norm1(x)).reshape(b, l, 3, h, d // h), 3, axis=2)
    q, k, v = (t[:, :, 0] for t in (q, k, v))
    logits = jnp.einsum("bqhk,bshk->bhqs", q, k).astype(jnp.float32) * (d // h) ** -0.5
    a = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    x = x + self.proj(jnp.einsum("bhqs,bshk->bqhk", a, v).reshape(b, l, d))
    return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x))))


def _table(rngs, n: int, d: int):
  # Positions, queries and mask tokens at unit scale, the scale of the LayerNormed patch
  # content, so that attention depends on position from the first step. With ViT's 0.02 (or
  # TiTok's d^-0.5, 0.125 at width 64) every query read the same average of the patches and
  # the MNIST recipe sat near the mean image (11-12 dB) through the 200-300 steps we ran.
  return make_param(rngs, nnx.initializers.normal(1.0), (n, d), (None, "embed"))


class TokenEncoder(nnx.Module):
  """[B, H, W, C] -> [B, 1, N, Z]."""

  def __init__(self, image_size: int, channels: int, z_channels: int, *, num_tokens: int,
               patch_size: int, width: int, depth: int, num_heads: int, rngs: nnx.Rngs):
    check_image_size(image_size, image_size, patch_size, "model.titok.patch_size patch")
    self.p = patch_size
    num_patches = (image_size // patch_size) ** 2
    self.patch = Linear(patch_size * patch_size * channels, width, rngs=rngs)
    self.pos = _table(rngs, num_patches, width)
    self.queries = _table(rngs, num_tokens, width)
    self.blocks = nnx.List([Block(width, num_heads, rngs=rngs) for _ in range(depth)])
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.out = Linear(width, z_channels, rngs=rngs)
    self.num_tokens = num_tokens

  def __call__(self, x, *, train: bool = False):
    del train
    b, hh, ww, c = x.shape
    p = self.p
    patches = x.reshape(b, hh // p, p, ww // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    h = self.patch(patches.reshape(b, -1, p * p * c)) + self.pos[...]
    q = jnp.broadcast_to(self.queries[...], (b,) + self.queries.shape)
    h = jnp.concatenate([h, q], axis=1)
    for block in self.blocks:
      h = block(h)
    z = self.out(self.norm(h[:, -self.num_tokens:]))
    return z[:, None]


class TokenDecoder(nnx.Module):
  """[B, 1, N, Z] -> [B, H, W, C]; `features`, `project` and `last_kernel` as ConvDecoder."""

  def __init__(self, image_size: int, channels: int, z_channels: int, *, num_tokens: int,
               patch_size: int, width: int, depth: int, num_heads: int, rngs: nnx.Rngs):
    self.p, self.side, self.channels = patch_size, image_size // patch_size, channels
    self.inp = Linear(z_channels, width, rngs=rngs)
    self.token_pos = _table(rngs, num_tokens, width)
    self.mask = _table(rngs, self.side * self.side, width)
    self.blocks = nnx.List([Block(width, num_heads, rngs=rngs) for _ in range(depth)])
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.out = Linear(width, patch_size * patch_size * channels, rngs=rngs)

  def features(self, z, *, train: bool = False):
    del train
    b = z.shape[0]
    t = self.inp(z[:, 0]) + self.token_pos[...]
    m = jnp.broadcast_to(self.mask[...], (b,) + self.mask.shape)
    h = jnp.concatenate([m, t], axis=1)
    for block in self.blocks:
      h = block(h)
    return self.norm(h[:, :self.side * self.side])

  @property
  def last_kernel(self) -> jax.Array:
    return self.out.kernel[...]

  def project(self, h, kernel: Optional[jax.Array] = None):
    b, p, s, c = h.shape[0], self.p, self.side, self.channels
    x = self.out(h, kernel).reshape(b, s, s, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, s * p, s * p, c)

  def __call__(self, z, *, train: bool = False):
    return self.project(self.features(z, train=train))
