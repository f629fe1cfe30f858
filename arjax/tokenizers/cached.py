"""Pre-tokenized data: tokens come in the batch (`batch['tokens']`), written once by a
learned tokenizer's token cache (`python -m arjax.tokenize`, arjax.train.token_cache). The config
states the vocabulary and grid; `tokenizer.checkpoint` names the tokenizer run that wrote the
tokens. That run is restored by the entry point, never here: `arjax.load` and the trainer hand
the model a copy of this tokenizer with the run's frozen autoencoder as its decoder
(`arjax.loading.generator_tokenizer`, `with_decoder`), which checks the vocabulary and grid and
decodes sampled tokens to pixels.

Continuous latents (a KL-VAE's token cache, records {"latents": float32 [N, C]}): set
`tokenizer.latent_dim` = C and `tokenizer.vocab_size` = 0; the generator then needs a
continuous head (model.head.name='gmm').

Legend: B batch, N = grid*grid tokens, H/W image size, C channels (latent or image).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

import numpy as np

from arjax.registry import read_fields
from arjax.tokenizers.base import TOKENIZERS


@dataclasses.dataclass(frozen=True)
class CachedFields:
  """`config.tokenizer` of tokenizer 'cached'."""
  vocab_size: int = 0             # codebook size of the pre-tokenized data (must be set: > 1).
  grid: int = 0                   # token grid side, grid*grid tokens (must be set: > 0).
  checkpoint: str = ""            # workdir of the tokenizer run that decodes samples ('': none).
  latent_dim: int = 0             # channels C of continuous latents (0: discrete tokens).
  scales: Tuple[int, ...] = ()    # multi-scale tokens (VAR): token-map sides, the last = grid.


class CachedTokens:

  def __init__(self, vocab_size: int, grid: int, checkpoint: str = "", latent_dim: int = 0,
               decoder: Optional[Any] = None, scales: Tuple[int, ...] = ()):
    """decoder: an object with `vocab_size`, `grid` (h, w), `latent_dim` and a jax
    `decode(tokens)` (int32 [B, N] or float [B, N, C] -> uint8 [B, H, W, C]), e.g.
    `arjax.loading.TrainedTokenizer`; None: tokens only."""
    if latent_dim > 0 and vocab_size != 0:
      raise ValueError(f"tokenizer 'cached' with tokenizer.latent_dim={latent_dim} holds "
                       f"continuous latents: set tokenizer.vocab_size=0, got {vocab_size}")
    if (latent_dim <= 0 and vocab_size <= 1) or grid <= 0:
      raise ValueError(f"tokenizer 'cached' needs tokenizer.vocab_size > 1 (or latent_dim > 0) "
                       f"and tokenizer.grid > 0, got vocab_size={vocab_size}, "
                       f"latent_dim={latent_dim}, grid={grid}")
    self.vocab_size = vocab_size
    self.token_dim = latent_dim  # C of continuous latents; 0 for discrete tokens.
    self.grid = (grid, grid)
    self.tokens_per_image = grid * grid
    self.scales = tuple(int(x) for x in scales)
    if self.scales:
      if list(self.scales) != sorted(set(self.scales)) or self.scales[0] < 1 \
          or self.scales[-1] != grid:
        raise ValueError(f"tokenizer.scales={list(self.scales)} must be positive, strictly "
                         f"increasing and end at tokenizer.grid={grid}")
      self.tokens_per_image = sum(x * x for x in self.scales)  # scales concatenated (VAR).
    self.checkpoint = checkpoint  # the run named by the config (restored by the entry point).
    self.decoder = decoder

  def with_decoder(self, decoder) -> "CachedTokens":
    """This tokenizer decoding through `decoder` (a trained tokenizer with frozen parameters),
    which must have this vocabulary, grid and latent width."""
    have = int(getattr(decoder, "latent_dim", 0))
    n = int(getattr(decoder, "tokens_per_image", self.tokens_per_image))
    if (int(decoder.vocab_size) != self.vocab_size or tuple(decoder.grid) != self.grid
        or have != self.token_dim or n != self.tokens_per_image):
      where = f" {self.checkpoint!r}" if self.checkpoint else ""
      raise ValueError(f"tokenizer.vocab_size={self.vocab_size}, tokenizer.grid={self.grid[0]}, "
                       f"tokenizer.latent_dim={self.token_dim} disagree with the tokenizer "
                       f"checkpoint{where}: vocab_size={decoder.vocab_size}, "
                       f"grid={decoder.grid[0]}x{decoder.grid[1]}, latent_dim={have}"
                       + (f", tokens_per_image={n} (tokenizer.scales={list(self.scales)} "
                          f"gives {self.tokens_per_image})" if n != self.tokens_per_image
                          else ""))
    return CachedTokens(self.vocab_size, self.grid[0], self.checkpoint, self.token_dim, decoder,
                        self.scales)

  def encode(self, images):
    raise ValueError("tokenizer 'cached' takes pre-tokenized data: the batch must carry "
                     "'tokens' (build them with `python -m arjax.tokenize`)")

  def decode(self, tokens):
    """int32 [B, N] (continuous: float [B, N, C]) -> uint8 [B, H, W, C] through the decoder handed in (`with_decoder`)."""
    if self.decoder is None:
      raise ValueError("tokenizer 'cached' cannot decode tokens to pixels: it was built without "
                       "the tokenizer run that wrote them. Set tokenizer.checkpoint to that "
                       "run's workdir and load the generator with arjax.load (or pass "
                       "tokenizer=arjax.loading.generator_tokenizer(config) to build_model)")
    return self.decoder.decode(tokens)

  def grid_positions(self):
    if self.scales:  # (row, col) on each token's own scale, scales concatenated.
      return np.concatenate([np.stack([np.repeat(np.arange(s), s), np.tile(np.arange(s), s)], -1)
                             for s in self.scales]).astype(np.int32)
    r = np.arange(self.grid[0])
    return np.stack([np.repeat(r, self.grid[1]), np.tile(r, self.grid[0])], -1).astype(np.int32)


@TOKENIZERS.register("cached", fields=CachedFields)
def _build_cached(config):
  t = read_fields(CachedFields, config.tokenizer, "tokenizer 'cached' (config.tokenizer)")
  return CachedTokens(vocab_size=t.vocab_size, grid=t.grid, checkpoint=t.checkpoint,
                      latent_dim=t.latent_dim, scales=t.scales)
