"""Attention: one function, several implementations.

`attention(q, k, v, mask=...)` is the single entry point every model uses. Implementations
register in `IMPLS`; 'xla' is the jnp reference (always available). The Pallas kernels register
themselves when their modules import (see issue 5).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Union

import jax

from arjax.kernels.masks import MaskSpec, as_mask_spec
from arjax.kernels.reference import attention_reference, check_shapes
from arjax.registry import Registry

IMPLS: Registry[Callable] = Registry("attention implementation")
IMPLS.register("xla")(attention_reference)

_log = logging.getLogger(__name__)


def _auto_impl() -> str:
  platform = jax.default_backend()
  if platform in ("gpu", "tpu") and "pallas" in IMPLS:
    return "pallas"
  return "xla"


def attention(q, k, v, mask: Union[str, MaskSpec, None] = "causal", *, impl: str = "auto",
              scale: Optional[float] = None):
  """Multi-head attention with grouped-query heads.

  Args:
    q: [B, Lq, H, K]; k, v: [B, Lk, Hkv, K], H % Hkv == 0.
    mask: a MaskSpec, or 'causal' / 'bidirectional'.
    impl: 'auto' (Pallas on GPU/TPU, XLA on CPU), or a registered name.
    scale: logits scale, default K ** -0.5.
  Returns: [B, Lq, H, K].
  """
  check_shapes(q, k, v)
  spec = as_mask_spec(mask)
  name = _auto_impl() if impl == "auto" else impl
  fn = IMPLS.get(name, field="attention impl")
  return fn(q, k, v, spec, scale=scale)


__all__ = ["attention", "attention_reference", "MaskSpec", "as_mask_spec", "IMPLS"]
