"""Masked diffusion LM (MDLM) on tiny Shakespeare: configs/text/dlm.py with objective 'mdlm'.

  python -m arjax.train --config configs/text/mdlm.py --workdir workdirs/mdlm

Validation bits/char is the continuous-time NELBO (an upper bound); samples: 16 ancestral
steps of the 'mdlm' sampler. `:smoke` runs the same code for a few steps.
"""
from arjax.config import parse_arg, sibling_config


def get_config(arg=None):
  args = parse_arg(arg)
  return sibling_config(__file__, "dlm.py").get_config(
      "objective=mdlm" + (",smoke" if args.smoke else ""))
