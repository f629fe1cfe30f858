"""MNIST tokenizer, quantizer 'kl' (28x28 -> 7x7 latent grid;
shared base arjax.recipes.tokenizers).

  python -m arjax.train --config configs/tokenizers/kl.py --workdir workdirs/tok_kl
  python -m arjax.train --config configs/tokenizers/kl.py:smoke --workdir /tmp/t_kl

Results at 200 steps on a 2-core CPU: docs/tokenizers.md.
"""
from arjax.config import parse_arg
from arjax.recipes.tokenizers import tokenizer_config


def get_config(arg=None):
  args = parse_arg(arg)
  return tokenizer_config("kl", smoke=args.smoke)
