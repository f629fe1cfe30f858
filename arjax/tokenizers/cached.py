"""Pre-tokenized data: tokens come in the batch (`batch['tokens']`), written once by a
learned tokenizer's token cache (`python -m arjax.tokenize`, arjax.tokenizers.cache). The config
states the vocabulary and grid; `tokenizer.checkpoint` names the tokenizer run that wrote the
tokens, which must agree with them and decodes sampled tokens to pixels.

Continuous latents (a KL-VAE's token cache, records {"latents": float32 [N, C]}): set
`tokenizer.latent_dim` = C and `tokenizer.vocab_size` = 0; the generator then needs a
continuous head (model.head.name='gmm').

Legend: B batch, N = grid*grid tokens, C latent channels.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from arjax.tokenizers.base import TOKENIZERS


class CachedTokens:

  def __init__(self, vocab_size: int, grid: int, checkpoint: str = "", latent_dim: int = 0):
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
    self.checkpoint = checkpoint
    if checkpoint:  # Fails at build time on a missing run or a disagreeing vocabulary/grid.
      from arjax.tokenizers.cache import check_cached_tokenizer
      m = check_cached_tokenizer(checkpoint, vocab_size, grid)
      have = int(m.quantizer.get("latent_dim", 0)) if m.quantizer.get("name") == "kl" else 0
      if have != latent_dim:
        raise ValueError(f"tokenizer.latent_dim={latent_dim} disagrees with the tokenizer "
                         f"checkpoint {checkpoint!r}: latent_dim={have}")

  def encode(self, images):
    raise ValueError("tokenizer 'cached' takes pre-tokenized data: the batch must carry "
                     "'tokens' (build them with `python -m arjax.tokenize`)")

  def decode(self, tokens):
    """int32 [B, N] (continuous: float [B, N, C]) -> uint8 [B, H, W, C] through the tokenizer run `tokenizer.checkpoint`
    (restored once per process; called eagerly by the samplers)."""
    if not self.checkpoint:
      raise ValueError("tokenizer 'cached' cannot decode tokens to pixels: set "
                       "tokenizer.checkpoint to the workdir of the tokenizer that wrote them")
    from arjax.tokenizers.cache import load_tokenizer
    return jnp.asarray(load_tokenizer(self.checkpoint).decode(tokens))

  def grid_positions(self):
    r = np.arange(self.grid[0])
    return np.stack([np.repeat(r, self.grid[1]), np.tile(r, self.grid[0])], -1).astype(np.int32)


@TOKENIZERS.register("cached")
def _build_cached(config):
  t = config.tokenizer
  return CachedTokens(vocab_size=t.vocab_size, grid=t.grid, checkpoint=t.get("checkpoint", ""),
                      latent_dim=t.get("latent_dim", 0))
