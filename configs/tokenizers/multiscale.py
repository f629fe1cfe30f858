"""MNIST tokenizer, quantizer 'multiscale' (28x28 -> 7x7 latent grid;
shared base arjax.recipes.tokenizers).

  python -m arjax.train --config configs/tokenizers/multiscale.py --workdir workdirs/tok_multiscale
  python -m arjax.train --config configs/tokenizers/multiscale.py:smoke --workdir /tmp/t_multiscale

Results at 200 steps on a 2-core CPU: docs/tokenizers.md.
"""
from arjax.config import parse_arg
from arjax.recipes.tokenizers import tokenizer_config


def get_config(arg=None):
  args = parse_arg(arg)
  return tokenizer_config("multiscale", smoke=args.smoke)
