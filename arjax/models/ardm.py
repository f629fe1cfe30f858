"""ARDM: order-agnostic autoregressive diffusion (Hoogeboom et al. 2022) on the ordered model.

The network is `ordered_ar` under order 'ardm' (arjax.orders.ardm): a bidirectional transformer
over [class, tokens with the unknown ones replaced by the learned [MASK] query]. This model only
replaces the loss by the order-agnostic bound with uniform t (weight D / (D - t + 1)), and adds
`step_losses`, the per-step loss curve l_t that the dynamic-programming step-budget policy
(`arjax.orders.ardm.dp_policy`) is fitted on. Sampling: the 'order' sampler, revealing random
cells in the order's step sizes.

Metrics: `nll` is the bound in nats per scored token (every token, or those with
batch['token_mask'] = 1), so the trainer's test bits/dim is the bound in bits/char.

Legend: B batch, N tokens (D scored per row), L = N + 1 slots.
"""
from __future__ import annotations

from typing import Dict, Tuple

import jax
import jax.numpy as jnp

from arjax.models.ordered_ar import OrderedAR, OrderedFields, gather_cells
from arjax.models.registry import MODELS
from arjax.orders import register_support
from arjax.orders.ardm import ARDMOrder, ardm_draw, step_draw

register_support("ardm", mask_kinds=("bidirectional",), orders=("ardm",))


class ARDM(OrderedAR):
  takes_continuous = False  # the order-agnostic bound is a sum of discrete log-probabilities.

  nll_is_bound = True   # the evaluation loss is the order-agnostic bound (the trainer says so).

  def __init__(self, config, *, rngs):
    super().__init__(config, rngs=rngs)
    if not isinstance(self.order, ARDMOrder):
      raise ValueError(f"model 'ardm' needs order.name='ardm', not {self.order.name!r}")

  def scored(self, batch, n: int) -> jax.Array:
    """bool [B, N]: the tokens the bound covers (token_mask, and not padding rows)."""
    b = batch["label"].shape[0]
    s = jnp.ones((b, n), jnp.float32)
    if "token_mask" in batch:
      s = s * batch["token_mask"].astype(jnp.float32)
    if "mask" in batch:
      s = s * batch["mask"][:, None].astype(jnp.float32)
    return s > 0

  def slot_nll(self, tokens, labels, known, predict, train: bool):
    """-log p of every predicted cell: float32 [B, L] over the layout's slots, 0 elsewhere."""
    layout = self.order.layout_for(known, predict)
    dist, layout = self.layout_dist(tokens, labels, layout, train=train)
    w = (layout.tgt >= 0).astype(jnp.float32)
    _, per_token = dist.loss(gather_cells(tokens, layout.tgt), weights=w)
    return per_token * w

  def loss(self, batch: Dict[str, jax.Array], *, train: bool
           ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    tokens, labels = self.tokens_and_labels(batch, train)
    key = self.rngs.sample() if train else jax.random.key(0)
    scored = self.scored(batch, tokens.shape[1])
    known, predict, weight = ardm_draw(key, scored)
    nll = self.slot_nll(tokens, labels, known, predict, train)
    bound = weight * nll.sum(1)                      # [B] estimate of -log p(scored | rest)
    count = scored.sum().astype(jnp.float32)
    loss = bound.sum() / jnp.maximum(count, 1.0)     # nats per scored token
    metrics = {"loss": loss, "nll": loss, "bits_per_dim": loss / jnp.log(2.0),
               "num_tokens": count}
    return loss, metrics

  def step_losses(self, tokens, labels, t, key):
    """float32 [B]: mean -log p over the N - t + 1 tokens predicted at step t (1..N) with t-1
    random tokens known; its mean over rows estimates l_t."""
    b, n = tokens.shape
    known, predict = step_draw(key, b, n, t)
    nll = self.slot_nll(tokens, labels, known, predict, False)
    return nll.sum(1) / (n - t + 1)


@MODELS.register("ardm", fields=OrderedFields)
def _build(config, *, rngs):
  return ARDM(config, rngs=rngs)
