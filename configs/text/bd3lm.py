"""Block diffusion LM (BD3-LM) on tiny Shakespeare: configs/text/dlm.py with objective 'bd3lm'.

  python -m arjax.train --config configs/text/bd3lm.py:block=4 --workdir workdirs/bd3lm_b4
  python -m arjax.train --config configs/text/bd3lm.py:block=16 --workdir workdirs/bd3lm_b16

block=B: the block size (divides L = 64; 4 by default). Training draws t ~ U[0.3, 0.8] per
block; validation bits/char is the NELBO bound (t ~ U[0, 1]); samples: SDAR's per-block
decoding ('sdar', dynamic, threshold 0.9). SDAR's AR -> block conversion: train
configs/text/dlm.py:objective=ar, then `python -m arjax.convert sdar --checkpoint AR_WORKDIR
--config configs/text/bd3lm.py:block=4 --workdir W` and train W with this config.
`:smoke` runs the same code for a few steps.
"""
from arjax.config import parse_arg, sibling_config


def get_config(arg=None):
  args = parse_arg(arg, block=4)
  return sibling_config(__file__, "dlm.py").get_config(
      f"objective=bd3lm,block={int(args.block)}" + (",smoke" if args.smoke else ""))
