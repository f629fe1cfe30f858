"""Lowest layer beside kernels/parallel/registry: the functional view of an NNX model."""
from arjax.core.functional import FunctionalModel, abstract_module

__all__ = ["FunctionalModel", "abstract_module"]
