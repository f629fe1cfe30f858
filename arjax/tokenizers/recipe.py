"""The shared base of the tokenizer configs (configs/tokenizers/*.py): an autoencoder on bundled
MNIST, 28x28 -> a 7x7 latent grid, trained and evaluated by `arjax.train`.

The five quantizers are set up at about the same bits per image (K codes, N tokens, N log2 K):

  vq          K = 512 (L2-normalised codes, LlamaGen), 49 tokens        441 bits
  fsq         levels (8, 8, 8) = 512, 49 tokens                          441 bits
  lfq         9 bits = 512 codes, 49 tokens                              441 bits
  multiscale  K = 32, scales (1, 2, 3, 5, 7) = 88 tokens (VAR)           440 bits
  kl          4 continuous channels per position (MAR-style KL-VAE)      continuous

`smoke` shrinks a config to a few CPU steps (under a minute) running the same code.
"""
from __future__ import annotations

import ml_collections

from arjax.config import base_config

QUANTIZERS = {  # name -> (quantizer fields, model overrides)
    "vq": (dict(codebook_size=512, code_dim=8, l2_norm=True), {}),
    "fsq": (dict(levels=[8, 8, 8]), {}),
    "lfq": (dict(code_dim=9, entropy_weight=0.1), {}),
    "multiscale": (dict(codebook_size=32, code_dim=32, scales=[1, 2, 3, 5, 7]),
                   dict(quant_conv=3)),
    "kl": (dict(latent_dim=4, kl_weight=1e-6), dict(quant_conv=1)),
}


def tokenizer_config(quantizer: str, *, smoke: bool = False) -> ml_collections.ConfigDict:
  """The MNIST tokenizer config for `quantizer` (one of QUANTIZERS)."""
  from arjax.models import autoencoder
  if quantizer not in QUANTIZERS:
    raise ValueError(f"tokenizer recipe: unknown quantizer {quantizer!r}; expected one of "
                     f"{sorted(QUANTIZERS)}")
  fields, model = QUANTIZERS[quantizer]
  c = base_config()
  c.data.source = "mnist"
  c.data.pp = ""
  c.model = autoencoder.default_config(quantizer, **fields)
  for key, value in model.items():
    c.model[key] = value
  t = c.train
  t.batch_size = 64
  t.num_steps = 600
  t.lr = 2e-3
  t.warmup_steps = 50
  t.weight_decay = 0.0          # no decay on codebooks (taming / MAR train with plain Adam).
  t.b1, t.b2 = 0.5, 0.9         # VQGAN's Adam betas.
  t.log_every = 50
  t.eval_every = 100_000        # evaluate once, at the end.
  t.checkpoint_every = 300
  e = c.eval
  e.batch_size = 500
  e.num_examples = 2000         # the first 2000 test images.
  if smoke:
    t.batch_size = 8
    t.num_steps = 4
    t.log_every = 2
    t.checkpoint_every = 2
    e.batch_size = 64
    e.num_examples = 64
    c.model.ch = 16
  return c
