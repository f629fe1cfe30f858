"""Heads turn a hidden state into a distribution and its loss."""
from arjax.heads.categorical import CategoricalHead, HEADS

__all__ = ["CategoricalHead", "HEADS"]
