"""ARDM (order-agnostic AR diffusion, Hoogeboom et al. 2022) on tiny Shakespeare.

  python -m arjax.train --config configs/text/ardm.py --workdir workdirs/ardm

The same data, width and budget as configs/text/char_ar.py, on a bidirectional transformer
(model 'ardm' = the ordered model under order 'ardm'): each 64-character window is trained
on the order-agnostic bound with t ~ U{1..64} (weight D/(D-t+1)); validation bits/char is that
bound (an upper bound on the NLL). Sampling reveals random characters, `order.num_steps` per
sequence (0: one per step) with step sizes `order.budget` (e.g. the DP policy's, see
arjax.orders.ardm.dp_policy). `:smoke` runs the same code for a few steps.
"""
from arjax.config import parse_arg, sibling_config


def get_config(arg=None):
  args = parse_arg(arg)
  c = sibling_config(__file__, "char_ar.py").get_config("smoke" if args.smoke else None)
  c.model.name = "ardm"
  c.order.name = "ardm"
  c.order.num_steps = 0           # sampling: one character per step (exact ancestral sampling).
  c.model.backbone.position = "rope2d"
  return c
