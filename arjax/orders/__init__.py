"""Generation orders: which positions are known and which are predicted at each step.

The raster order is the baseline; random, parallel and masked orders join this registry
(issue 6) without changing the backbone or the trainer.
"""
from arjax.orders.base import ORDERS, build_order
from arjax.orders import raster  # noqa: F401  (registers 'raster')

__all__ = ["ORDERS", "build_order"]
