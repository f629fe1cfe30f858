"""Mesh creation, logical-axis rules, sharding helpers and multi-process initialisation.

The lowest layer: nothing here builds a model or a train step (the ahead-of-time memory report
is arjax.train.memory).
"""
from arjax.parallel.mesh import (batch_sharding, logical_to_spec, make_mesh, mesh_shape,
                                 maybe_initialize_distributed, named_sharding, replicated)
from arjax.parallel.rules import DEFAULT_RULES, LOGICAL_AXES, MESH_AXES
from arjax.parallel.sharding import state_shardings, logical_axes_tree

__all__ = ["batch_sharding", "logical_to_spec", "make_mesh", "mesh_shape",
           "maybe_initialize_distributed", "named_sharding", "replicated", "DEFAULT_RULES",
           "LOGICAL_AXES", "MESH_AXES", "state_shardings", "logical_axes_tree"]
