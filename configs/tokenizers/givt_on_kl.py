"""GIVT-Causal on MNIST: a raster AR model over continuous KL-VAE latents with the GMM head.

  python -m arjax.train --config configs/tokenizers/kl.py --workdir workdirs/tok_kl
  python -m arjax.tokenize --tokenizer_workdir workdirs/tok_kl --data mnist \
      --out 'workdirs/mnist_kl/{split}.array_record'
  python -m arjax.train --config configs/tokenizers/givt_on_kl.py --workdir workdirs/givt_kl

The token cache stores the KL posterior MEAN of each image times the quantizer's scale_factor
(`quantizer.sample_tokens=False`, the default of configs/tokenizers/kl.py): 7x7 = 49 tokens of
latent_dim = 4 floats. The generator embeds each token with a Dense projection (no vocabulary)
and predicts a 16-component diagonal GMM per token (arjax.heads.gmm, GIVT: Tschannen et al.
2023); samples are guided with GIVT's density CFG and decoded to pixels through the tokenizer
run `tokenizer=WORKDIR`. bits_per_dim is the NLL in bits per token (4 channels; training also
logs bits_per_channel); both are densities and can be negative. Results: docs/heads.md.

Arguments: tokenizer=WORKDIR, cache=PATH with '{split}', latent_dim and grid of that tokenizer
(checked against its checkpoint at start), smoke (a few steps, under a minute; like
raster_on_tokens' smoke it runs on a fresh clone: the tokens are the continuous values of the
7x7 area-averaged pixels, `tokenizer.continuous=True`, instead of the tokenizer run's latents).
"""
from arjax.config import parse_arg, sibling_config

on_tokens = sibling_config(__file__, "raster_on_tokens.py")


def get_config(arg=None):
  args = parse_arg(arg, tokenizer="workdirs/tok_kl", cache="workdirs/mnist_kl/{split}.array_record",
                   latent_dim=4, grid=7)
  c = on_tokens.get_config(f"tokenizer={args.tokenizer},cache={args.cache},vocab_size=0,"
                           f"grid={args.grid},smoke={args.smoke}")
  if args.smoke:  # raster_on_tokens' stand-in, with continuous pixel values as the tokens.
    c.tokenizer.continuous = True
  else:
    c.tokenizer.latent_dim = args.latent_dim
  h = c.model.head
  del h["label_smoothing"]          # a categorical field; the GMM declares its own.
  h.name = "gmm"                    # registry name in arjax.heads.
  h.num_components = 16             # K mixture components per token (GIVT: 16).
  h.cfg_proposals = 1000            # rejection-sampling proposals per channel under CFG.
  c.train.num_steps = 800
  c.train.lr = 1e-3
  c.train.warmup_steps = 100
  c.train.log_every = 100
  c.train.checkpoint_every = 400
  c.eval.cfg_scale = 2.0            # arjax scale s = 1 + GIVT's w.
  c.eval.temperature = 0.95         # GIVT's sampling temperature on the scales.
  if args.smoke:
    c.train.num_steps, c.train.log_every, c.train.checkpoint_every = 4, 2, 4
    h.num_components, h.cfg_proposals = 4, 64
  return c
