"""The multi-scale tokenizer of experiments/next_scale.py: configs/tokenizers/multiscale.py on
VAR-style scales 1,2,3,4,5,7 of the 7x7 MNIST latent (N = 104 tokens of a 32-code book) and
more steps than the tokenizer table's 200.

  python -m arjax.train --config configs/next_scale/tokenizer.py --workdir W/tokenizer

Arguments: steps (default 600), residual (default true; false: every scale quantized on its own
from the area-downsampled latent, the tokens FlexVAR predicts), smoke (the recipe's smoke sizes,
the same scales).
"""
from arjax.config import parse_arg
from arjax.recipes.tokenizers import tokenizer_config

SCALES = [1, 2, 3, 4, 5, 7]


def get_config(arg=None):
  args = parse_arg(arg, steps=600, residual=True)
  c = tokenizer_config("multiscale", smoke=args.smoke)
  c.model.quantizer.scales = list(SCALES)
  c.model.quantizer.residual = bool(args.residual)
  if not args.smoke:
    c.train.num_steps = int(args.steps)
    c.train.checkpoint_every = 200
  return c
