"""MNIST tokenizer, quantizer 'multiscale' with HART's hybrid option (28x28 -> 7x7 latent grid;
shared base arjax.recipes.tokenizers): VAR's residual scales, and the decoder trained on both
f_hat_discrete + the continuous residual and f_hat_discrete alone (skip probability
`skip=`, HART: 0.5).

  python -m arjax.train --config configs/tokenizers/hart_hybrid.py --workdir workdirs/tok_hart
  python -m arjax.train --config configs/tokenizers/hart_hybrid.py:smoke --workdir /tmp/t_hart
  python -m arjax.inspect --config configs/tokenizers/hart_hybrid.py --json
"""
from arjax.config import parse_arg
from arjax.recipes.tokenizers import tokenizer_config


def get_config(arg=None):
  args = parse_arg(arg, skip="0.5")
  c = tokenizer_config("multiscale", smoke=args.smoke)
  c.model.quantizer.hybrid = True
  c.model.quantizer.skip_continuous_prob = float(args.skip)
  return c
