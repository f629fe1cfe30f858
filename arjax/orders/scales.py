"""Scale order: next-scale prediction (VAR, Tian et al. 2024, "Visual Autoregressive Modeling:
Scalable Image Generation via Next-Scale Prediction"; Markovian variant: HMAR, Kumbong et al.
2025, and SRDD).

The N = sum_k h_k^2 tokens of K token maps of sides h_1 < ... < h_K (scale 1 first, each map
row-major) are generated one whole scale per step: K steps instead of N. In training every slot
predicts its own cell (slot i -> token i); the slots of scale k carry the class (k = 1) or the
upsampled reconstruction of scales < k (the model computes those inputs), so

  block-causal   a slot of scale k sees every slot of scales <= k (bidirectional in a scale);
  markovian      a slot of scale k sees scales k - 1 and k only (per attention layer: through
                 L blocks a change at scale k can still reach scale k + L; the inputs, the
                 running f_hat, carry every earlier token in both variants).
  markov_window=0 a slot of scale k sees scale k only (block-diagonal; HMAR's released mask: the
                 input of scale k already carries scale k - 1).

Sampling step k reveals the whole of scale k (`Plan.step_of` = the scale of each cell, the
base rule of `Order.reveal_cells`). `level_ids` are the scale of every slot (VAR's level
embedding) and `grid_positions` the (row, col) of each token on its own scale.

Legend: B batch, K scales, N tokens, L = N slots.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple

import jax.numpy as jnp
import numpy as np

from arjax.kernels.masks import MaskSpec
from arjax.orders.base import (ORDERS, SRC_CLASS, Layout, Order, identity_perm, order_fields,
                               plan_from_cumulative)

VAR_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


@dataclasses.dataclass(frozen=True)
class ScaleFields:
  """`config.order` of order 'scales'."""
  scales: Tuple[int, ...] = VAR_SCALES  # token-map sides h_1 .. h_K, small to large.
  markovian: bool = False               # scale k attends to scales k-w .. k only (HMAR).
  markov_window: int = 1                # w of the Markovian mask: 1 (scales k-1 and k) or 0
  # (scale k only, block-diagonal: HMAR's released mask, the input already carrying scale k-1).


def check_scales(scales: Sequence[int], where: str, grid: int = 0, max_tokens: int = 0
                 ) -> Tuple[int, ...]:
  """Validates a scale list; raises ValueError naming `where`, the list and the constraint.

  grid: the side the last scale must equal (the tokenizer's latent grid; 0: unchecked).
  max_tokens: the largest token count a position table holds (0: unchecked).
  """
  s = tuple(int(x) for x in scales)
  if not s or s[0] < 1:
    raise ValueError(f"{where}={list(s)}: expected a non-empty list of positive sides")
  if any(b <= a for a, b in zip(s, s[1:])):
    raise ValueError(f"{where}={list(s)}: the sides must be strictly increasing")
  if grid and s[-1] != grid:
    raise ValueError(f"{where}={list(s)}: the last side must be the tokenizer's grid {grid}")
  n = sum(x * x for x in s)
  if max_tokens and n > max_tokens:
    raise ValueError(f"{where}={list(s)} has {n} tokens, more than the position table's "
                     f"{max_tokens}")
  return s


class ScaleOrder(Order):
  name = "scales"
  mask_kind = "block"
  causal = True

  def __init__(self, scales: Sequence[int] = VAR_SCALES, markovian: bool = False,
               markov_window: int = 1):
    scales = check_scales(scales, "order.scales")
    if markov_window not in (0, 1):
      raise ValueError(f"order.markov_window={markov_window}: expected 0 (scale k only) or 1 "
                       "(scales k-1 and k)")
    self.scales = scales
    self.markovian = bool(markovian)
    self.markov_window = int(markov_window)
    self.level_ids_np = np.concatenate([np.full(s * s, k, np.int32)
                                        for k, s in enumerate(scales)])        # [N]
    ends = np.cumsum([s * s for s in scales])
    self.bounds = tuple(zip([0] + [int(e) for e in ends[:-1]], [int(e) for e in ends]))
    pos = np.concatenate([np.stack([np.repeat(np.arange(s), s), np.tile(np.arange(s), s)], -1)
                          for s in scales]).astype(np.int32)
    super().__init__(int(ends[-1]), pos, (scales[-1], scales[-1]))

  @property
  def num_scales(self) -> int:
    return len(self.scales)

  @property
  def level_ids(self):
    """int32 [N]: the scale (from 0) of every slot and token."""
    return jnp.asarray(self.level_ids_np)

  def num_steps(self) -> int:
    return self.num_scales

  # -- masks ------------------------------------------------------------------------------------
  def visible(self) -> np.ndarray:
    """bool [N, N]: query slot i may see key slot j (float64-free numpy reference too)."""
    q, k = self.level_ids_np[:, None], self.level_ids_np[None, :]
    ok = k <= q
    if self.markovian:
      ok &= k >= q - self.markov_window
    return ok

  def train_mask(self) -> MaskSpec:
    if self.markovian:
      return MaskSpec(kind="dense", dense=jnp.asarray(self.visible())[None, None])
    ids = self.level_ids[None]
    return MaskSpec(kind="block_causal", q_block_ids=ids, kv_block_ids=ids)

  def decode_mask(self, k: int) -> MaskSpec:
    """Mask of scale k's queries (from 0) over a KV cache holding scales 0 .. k (static k)."""
    a, e = self.bounds[k]
    if not self.markovian or k == 0:
      return MaskSpec(kind="bidirectional", kv_length=jnp.full((1,), e, jnp.int32))
    lo = self.bounds[k - self.markov_window][0]
    cols = np.arange(self.num_tokens)
    row = (cols >= lo) & (cols < e)
    dense = np.broadcast_to(row, (e - a, self.num_tokens))[None, None]
    return MaskSpec(kind="dense", dense=jnp.asarray(dense))

  # -- the order protocol (arjax.orders.base) --------------------------------------------------
  def train_layout(self, rng, batch: int, step=None, train: bool = True) -> Layout:
    n = self.num_tokens
    cells = identity_perm(batch, n)
    first = self.bounds[0][1]
    src = jnp.where(cells < first, SRC_CLASS, cells)  # later slots: f_hat of the scales before.
    return Layout(src=src, pos=cells, tgt=cells, mask=self.train_mask(), perm=cells)

  def sample_plan(self, rng, batch: int, known=None):
    return plan_from_cumulative(identity_perm(batch, self.num_tokens),
                                [e for _, e in self.bounds], known)

  def sample_layout(self, plan, known):
    return self.train_layout(None, plan.perm.shape[0])


@ORDERS.register("scales", fields=ScaleFields)
def _build_scales(config, tokenizer):
  f = order_fields(ScaleFields, config, "scales")
  order = ScaleOrder(f.scales, f.markovian, f.markov_window)
  grid = tuple(getattr(tokenizer, "grid", ()))
  if grid and grid != order.grid:
    raise ValueError(f"order.scales={list(order.scales)} must end at the tokenizer's grid "
                     f"{grid[0]}x{grid[1]} (tokenizer {config.tokenizer.name!r})")
  tok_scales = getattr(tokenizer, "scales", None)
  if tok_scales is not None and tuple(tok_scales) and tuple(tok_scales) != order.scales:
    raise ValueError(f"order.scales={list(order.scales)} differ from the tokenizer's scales "
                     f"{list(tok_scales)} (tokenizer {config.tokenizer.name!r})")
  n = int(getattr(tokenizer, "tokens_per_image", order.num_tokens))
  if n != order.num_tokens:
    raise ValueError(f"order.scales={list(order.scales)} give {order.num_tokens} tokens but the "
                     f"tokenizer {config.tokenizer.name!r} has {n} tokens per image")
  return order
