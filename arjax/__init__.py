"""arjax: one codebase for autoregressive generative models in JAX/Flax.

A generator is five swappable parts (see DESIGN.md):
tokenizer -> order -> backbone -> head -> sampler.
"""
__version__ = "0.1.0"
