"""MNIST tokenizer, quantizer 'vq' (28x28 -> 7x7 latent grid;
shared base arjax.recipes.tokenizers).

  python -m arjax.train --config configs/tokenizers/vq.py --workdir workdirs/tok_vq
  python -m arjax.train --config configs/tokenizers/vq.py:smoke --workdir /tmp/t_vq
  # EMA codebook (decay 0.99) with dead-code restart (below 1 hit per step on average)
  python -m arjax.train --config configs/tokenizers/vq.py:ema --workdir workdirs/tok_vq_ema

Results at 200 steps on a 2-core CPU: docs/tokenizers.md.
"""
from arjax.config import parse_arg
from arjax.recipes.tokenizers import tokenizer_config


def get_config(arg=None):
  args = parse_arg(arg, ema=False)
  c = tokenizer_config("vq", smoke=args.smoke)
  if args.ema:
    # VQ-VAE's EMA codebook (the codebook loss term drops out) and Jukebox's restarts; the
    # trainer carries both as model state (docs/tokenizers.md).
    c.model.quantizer.ema_decay = 0.99
    c.model.quantizer.dead_code_threshold = 1.0
  return c
