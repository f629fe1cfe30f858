"""Generation orders: which positions are known and which are predicted at each step.

An order yields a training `Layout` (slots, positions, targets, attention mask, permutation)
and a sampling `Plan` (the position groups, or for confidence orders the reveal rule), so that
raster, random (RAR, ARPG), RandAR, LPD, PAR, NAR and masked (MaskGIT / MaskGIL) generators share
the backbone, the trainer and the sampler (issue 6).
"""
from arjax.orders.base import (ORDERS, SRC_CLASS, SRC_QUERY, SRC_START, Layout, Order, Plan,
                               build_order, check_support, register_support)
from arjax.orders import raster  # noqa: F401  (registers 'raster')
from arjax.orders import random as _random  # noqa: F401  ('random', 'arpg', 'randar')
from arjax.orders import groups  # noqa: F401  ('lpd', 'par', 'nar')
from arjax.orders import masked  # noqa: F401  ('masked')
from arjax.orders import scales  # noqa: F401  ('scales': VAR's next-scale order)
from arjax.orders import ardm  # noqa: F401  ('ardm')

__all__ = ["ORDERS", "Layout", "Order", "Plan", "SRC_CLASS", "SRC_QUERY", "SRC_START",
           "build_order", "check_support", "register_support"]
