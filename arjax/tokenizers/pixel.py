"""Pixel tokenizer: every sub-pixel of a (downsampled) uint8 image is a k-level token.

Needs no training, so the raster vertical slice runs without a learned tokenizer. A pixel
value v in [0, 255] maps to token floor(v * k / 256); a token t decodes to the bucket centre
(t + 0.5) * 256 / k. Images larger than `resolution` are area-averaged by an integer factor.
Bits/dim reported for pixel models are per k-level sub-pixel at `resolution`.

`continuous=True` keeps the (area-averaged) values instead: one float32 token of C channels per
pixel, v / 127.5 - 1 in [-1, 1] (no vocabulary: a continuous head such as the GMM models them).
It is the stand-in for continuous latents that needs no trained tokenizer (GIVT-style smoke runs).

Legend: B batch, H/W image size, C channels, R resolution, N = R*R*C tokens (continuous: R*R
tokens of C channels).
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import jax.numpy as jnp
import numpy as np

from arjax.core.checks import check_array
from arjax.registry import read_fields
from arjax.tokenizers.base import TOKENIZERS


@dataclasses.dataclass(frozen=True)
class PixelFields:
  """`config.tokenizer` of tokenizer 'pixel'."""
  levels: int = 8                 # grey levels per sub-pixel (the vocabulary).
  resolution: int = 14            # token grid side (images are area-downsampled to it).
  channels: int = 1               # image channels.
  continuous: bool = False        # float tokens [N, C] in [-1, 1] instead of k-level integers.


class PixelTokenizer:

  def __init__(self, levels: int, resolution: int, channels: int, continuous: bool = False):
    if not 2 <= levels <= 256:
      raise ValueError(f"tokenizer.levels={levels}; expected 2..256")
    self.levels = levels
    self.resolution = resolution
    self.channels = channels
    self.continuous = continuous
    self.vocab_size = 0 if continuous else levels
    self.token_dim = channels if continuous else 0  # C of a continuous token; 0: discrete.
    self.grid: Tuple[int, int] = (resolution, resolution)
    self.tokens_per_image = resolution * resolution * (1 if continuous else channels)

  def _check(self, images):
    if images.ndim != 4 or images.shape[-1] != self.channels:
      raise ValueError(f"pixel tokenizer expects images [B, H, W, {self.channels}], got shape "
                       f"{tuple(images.shape)}")
    if images.dtype != jnp.uint8:
      raise ValueError(f"pixel tokenizer expects uint8 images, got {images.dtype}")
    h, w = images.shape[1:3]
    if h != w or h % self.resolution:
      raise ValueError(f"images of {h}x{w} cannot be area-downsampled to tokenizer.resolution="
                       f"{self.resolution} (need square images whose size is a multiple)")

  def encode(self, images):
    """uint8 [B, H, W, C] -> int32 [B, N] (raster over rows, columns, channels); continuous:
    float32 [B, R*R, C]."""
    self._check(images)
    b, h = images.shape[0], images.shape[1]
    f = h // self.resolution
    x = images.astype(jnp.float32)
    if f > 1:
      x = x.reshape(b, self.resolution, f, self.resolution, f, self.channels).mean(axis=(2, 4))
      x = jnp.round(x)
    if self.continuous:
      return (x / 127.5 - 1.0).reshape(b, -1, self.channels)
    tokens = jnp.floor(x * self.levels / 256.0).astype(jnp.int32)
    return jnp.clip(tokens, 0, self.levels - 1).reshape(b, -1)

  def decode(self, tokens):
    """int32 [B, N] (continuous: float [B, R*R, C]) -> uint8 [B, R, R, C]."""
    if self.continuous:
      check_array(tokens, "tokens", "pixel tokenizer decode", kind="float",
                  shape=(None, self.tokens_per_image, self.channels))
    else:
      check_array(tokens, "tokens", "pixel tokenizer decode", kind="int",
                  shape=(None, self.tokens_per_image), legend=" ([B, N])")
    b = tokens.shape[0]
    if self.continuous:
      v = (tokens.astype(jnp.float32) + 1.0) * 127.5
    else:
      v = (tokens.astype(jnp.float32) + 0.5) * (256.0 / self.levels)
    v = jnp.clip(jnp.round(v), 0, 255).astype(jnp.uint8)
    return v.reshape(b, self.resolution, self.resolution, self.channels)

  def grid_positions(self):
    """(row, col) of each token; the channels of one pixel share its position."""
    r = np.arange(self.resolution)
    per_cell = 1 if self.continuous else self.channels
    rows = np.repeat(np.repeat(r, self.resolution), per_cell)
    cols = np.repeat(np.tile(r, self.resolution), per_cell)
    return np.stack([rows, cols], -1).astype(np.int32)


@TOKENIZERS.register("pixel", fields=PixelFields)
def _build_pixel(config):
  t = read_fields(PixelFields, config.tokenizer, "tokenizer 'pixel' (config.tokenizer)")
  return PixelTokenizer(levels=t.levels, resolution=t.resolution, channels=t.channels,
                        continuous=t.continuous)
