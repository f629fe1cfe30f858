"""MNIST tokenizer, quantizer 'lfq' (28x28 -> 7x7 latent grid;
shared base arjax.recipes.tokenizers).

  python -m arjax.train --config configs/tokenizers/lfq.py --workdir workdirs/tok_lfq
  python -m arjax.train --config configs/tokenizers/lfq.py:smoke --workdir /tmp/t_lfq

Results at 200 steps on a 2-core CPU: docs/tokenizers.md.
"""
from arjax.config import parse_arg
from arjax.recipes.tokenizers import tokenizer_config


def get_config(arg=None):
  args = parse_arg(arg)
  return tokenizer_config("lfq", smoke=args.smoke)
