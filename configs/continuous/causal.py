"""Causal continuous AR (NextStep-1 style) on MNIST: the raster AR transformer over continuous
KL-VAE latents, with the per-token head a config field: head=flow (default) | diffusion | gmm.

  python -m arjax.train --config configs/tokenizers/kl.py --workdir workdirs/tok_kl
  python -m arjax.tokenize --tokenizer_workdir workdirs/tok_kl --data mnist \
      --out 'workdirs/mnist_kl/{split}.array_record'
  python -m arjax.train --config configs/continuous/causal.py:head=flow --workdir workdirs/cont_flow

The model is `raster_ar` ([class, x_0 .. x_{N-2}] predicts x_0 .. x_{N-1}; a Dense projection of
each continuous token) with one of the continuous heads of arjax.heads:

  flow       rectified-flow head (x_t = t x + (1 - t) eps, v = x - eps; logit-normal t; Euler),
  diffusion  MAR's diffusion loss (cosine schedule over 1000 steps, learned variance, DDPM
             over 100 respaced steps at sampling),
  gmm        GIVT's 16-component mixture (configs/tokenizers/givt_on_kl.py's head).

The diffusion and flow heads use a MAR-style adaLN MLP of width 128 and depth 3 here (MAR-B's
is 1024 x 6), sized to the 4-channel latents and the 96-wide backbone. Their `bits_per_dim`
metric is the head's training loss / ln 2, not a likelihood (docs/heads.md).

Arguments: head, tokenizer=WORKDIR, cache=PATH with '{split}', latent_dim and grid of that
tokenizer (checked against its checkpoint at start), smoke (a few steps on a fresh clone: as
givt_on_kl.py's smoke, the tokens are the continuous values of the 7x7 area-averaged pixels,
`tokenizer.continuous=True`, instead of the tokenizer run's latents).
"""
from arjax.config import parse_arg, sibling_config

givt = sibling_config(__file__, "../tokenizers/givt_on_kl.py")

HEADS = ("flow", "diffusion", "gmm")


def get_config(arg=None):
  args = parse_arg(arg, head="flow", tokenizer="workdirs/tok_kl",
                   cache="workdirs/mnist_kl/{split}.array_record", latent_dim=4, grid=7)
  if args.head not in HEADS:
    raise ValueError(f"config argument head={args.head!r}; expected one of {list(HEADS)}")
  c = givt.get_config(f"tokenizer={args.tokenizer},cache={args.cache},"
                      f"latent_dim={args.latent_dim},grid={args.grid},smoke={args.smoke}")
  if args.head == "gmm":
    return c
  h = c.model.head
  for k in list(h.keys()):
    del h[k]                       # the GMM's fields; each head declares its own.
  h.name = args.head
  h.width, h.depth = 128, 3
  if args.head == "diffusion":
    h.diffusion_batch_mul = 4      # MAR: 4 (t, eps) draws per token.
    h.num_sampling_steps = 100     # MAR: 100 respaced DDPM steps.
  else:
    h.batch_mul = 4                # NextStep-1: 4 draws per token.
    h.num_sampling_steps = 20      # NextStep-1: 20 steps.
    h.solver = "euler"
    h.time_sampling = "logit_normal"
  c.eval.temperature = 1.0         # MAR samples at 1.0 with CFG.
  c.eval.cfg_scale = 2.0
  if args.smoke:
    h.width, h.depth = 32, 1
    h.num_sampling_steps = 4
  return c
