"""MNIST 1D-token tokenizer: TiTok-style learned queries (49 tokens) read the 7x7 grid of 4x4
patches, quantized by FSQ (levels 8, 8, 8: 512 codes, 441 bits per image like the conv rows);
L2 loss, 1000 steps; shared base arjax.recipes.tokenizers.

  python -m arjax.train --config configs/tokenizers/titok.py --workdir workdirs/tok_titok
  python -m arjax.train --config configs/tokenizers/titok.py:smoke --workdir /tmp/t_titok

Results on a 2-core CPU: docs/tokenizers.md.
"""
from arjax.config import parse_arg
from arjax.recipes.tokenizers import tokenizer_config


def get_config(arg=None):
  args = parse_arg(arg)
  return tokenizer_config("fsq", smoke=args.smoke, encoder="titok")
