"""The order abstraction: which positions are known and which are predicted at each step.

For training an order yields a `Layout`: the sequence of slots the backbone sees, what each
slot carries (the class, a query / [MASK] embedding, or the token of a grid cell), the grid
position each slot is embedded at, the grid cell its output predicts, and the attention mask.
For sampling it yields a `Plan`: a permutation and the step at which each cell is generated
(the sequence of position groups), or, for confidence orders, the rule that picks the groups
from the model's confidences (`Order.confidence`). A model turns a layout into one
distribution per predicted cell, so the backbone and the trainer never special-case a paper.

Legend: B batch, N tokens per image, L slots in the layout.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from arjax.kernels.masks import MaskSpec
from arjax.registry import Registry, read_fields

ORDERS: Registry = Registry("order")

# Slot sources (Layout.src): >= 0 is the grid cell whose token the slot carries.
SRC_CLASS = -1   # the class (or null-class) embedding.
SRC_QUERY = -2   # a learned query / [MASK] embedding (RandAR, LPD, PAR, MaskGIT).
SRC_START = -3   # a learned start token before the class (RAR's [cls]).

# Which orders a model can run: model name -> mask kinds (or order names) it supports. Models
# register themselves; `build_order` refuses an order the model cannot run, with the names.
_MODEL_SUPPORT: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {}


def register_support(model_name: str, mask_kinds: Sequence[str] = (),
                     orders: Sequence[str] = ()) -> None:
  """Declares the attention-mask kinds (and optionally the exact order names) of a model."""
  _MODEL_SUPPORT[model_name] = (tuple(mask_kinds), tuple(orders))


def check_support(order, model_name: str) -> None:
  if model_name not in _MODEL_SUPPORT:
    return
  kinds, names = _MODEL_SUPPORT[model_name]
  # An order whose predictions live outside Layout.tgt (NAR's right/below heads) trains
  # nothing on a generic model: its loss would be an empty sum, so refuse it by name.
  needs = getattr(order, "models", ())
  if needs and model_name not in needs:
    raise ValueError(f"order.name={order.name!r} needs model.name in {list(needs)} (its "
                     f"predictions are not slot targets), not {model_name!r}")
  if names and order.name not in names:
    raise ValueError(f"order.name={order.name!r} cannot run on model.name={model_name!r}, "
                     f"which supports only the orders {list(names)}")
  if kinds and order.mask_kind not in kinds:
    raise ValueError(f"order.name={order.name!r} needs a {order.mask_kind!r} attention mask, "
                     f"but model.name={model_name!r} supports only {list(kinds)}")


def order_fields(fields_cls, config, name: str):
  """The fields order `name` declares (`fields_cls`), read from `config.order` (the declared
  defaults where it sets none); an undeclared field fails naming the order and the field."""
  node = config["order"] if "order" in config else None
  return read_fields(fields_cls, node, f"order {name!r} (config.order)")


@dataclasses.dataclass(frozen=True)
class NoFields:
  """The fields of an order that reads none from `config.order` (raster, NAR)."""


def build_order(config, tokenizer):
  order = ORDERS.get(config.order.name, field="order.name")(config, tokenizer)
  check_support(order, config.model.name)
  return order


@struct.dataclass
class Layout:
  """What the backbone sees for one batch. All int32 [B, L] unless noted.

  src: SRC_* or the grid cell whose token the slot carries.
  pos: grid cell whose position the slot is embedded at (RoPE / learned), -1 for none.
  tgt: grid cell this slot's output predicts, -1 for no prediction.
  mask: the attention MaskSpec over the L slots.
  perm: int32 [B, N], the generation order (perm[b, t] = cell generated t-th).
  """
  src: jax.Array
  pos: jax.Array
  tgt: jax.Array
  mask: MaskSpec
  perm: jax.Array

  @property
  def num_slots(self) -> int:
    return self.src.shape[1]

  def prepend(self, n: int) -> "Layout":
    """Adds n start slots (SRC_START) that see only each other and are seen by every slot."""
    if n == 0:
      return self
    b = self.src.shape[0]
    pad = lambda x, v: jnp.concatenate([jnp.full((b, n), v, x.dtype), x], axis=1)
    m = self.mask
    if m.kind in ("causal", "bidirectional"):
      mask = m
    elif m.kind == "block_causal":
      lo = lambda ids: jnp.concatenate(
          [jnp.full((ids.shape[0], n), jnp.min(ids) - 1, ids.dtype), ids], 1)
      mask = m.replace(q_block_ids=lo(m.q_block_ids), kv_block_ids=lo(m.kv_block_ids))
    elif m.kind == "dense":
      d = m.dense
      rows, cols = d.shape[-2], d.shape[-1]
      top = jnp.broadcast_to(jnp.arange(n + cols)[None, :] < n, d.shape[:2] + (n, n + cols))
      body = jnp.concatenate([jnp.ones(d.shape[:2] + (rows, n), bool), d.astype(bool)], -1)
      mask = m.replace(dense=jnp.concatenate([top, body], -2))
    else:
      raise ValueError(f"Layout.prepend: unsupported mask kind {m.kind!r}")
    return Layout(src=pad(self.src, SRC_START), pos=pad(self.pos, -1), tgt=pad(self.tgt, -1),
                  mask=mask, perm=self.perm)

  def hide_unknown(self, known) -> "Layout":
    """Hides every slot that carries a token not yet generated (known bool [B, N]).

    This turns a training layout into the layout of a sampling step: a query never attends
    to a cell that is generated in the same or a later step (RandAR's and ARPG's parallel
    decoding, LPD's and PAR's groups).
    """
    b, l = self.src.shape
    cell_known = jnp.take_along_axis(known, jnp.maximum(self.src, 0), axis=1)
    visible = (self.src < 0) | cell_known                                   # [B, L]
    base = self.mask.materialize(b, l, l)                                   # [B|1, 1, L, L]
    dense = base & visible[:, None, None, :]
    return self.replace(mask=MaskSpec(kind="dense", dense=dense))


@struct.dataclass
class Plan:
  """A sampling plan for a fixed-group order.

  perm: int32 [B, N] generation order; step_of: int32 [B, N], the step that generates each
  cell (-1: given, e.g. by an inpainting mask); num_steps: static number of steps.
  """
  perm: jax.Array
  step_of: jax.Array
  num_steps: int = struct.field(pytree_node=False, default=0)


def identity_perm(batch: int, n: int):
  return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n))


def random_perm(rng, batch: int, n: int, known=None):
  """A uniformly random order per sample; with `known` [B, N], the known cells come first."""
  keys = jax.random.uniform(rng, (batch, n))
  if known is not None:
    keys = keys - 2.0 * known.astype(keys.dtype)  # known cells sort before every unknown one.
  return jnp.argsort(keys, axis=1).astype(jnp.int32)


def inverse_perm(perm):
  """rank[b, cell] = t with perm[b, t] = cell."""
  b, n = perm.shape
  return jnp.zeros_like(perm).at[jnp.arange(b)[:, None], perm].set(
      jnp.broadcast_to(jnp.arange(n, dtype=perm.dtype), (b, n)))


def plan_from_cumulative(perm, cumulative: Sequence[int], known=None) -> Plan:
  """step_of from cumulative counts: rank r is generated at the first k with r < cum[k]."""
  cum = np.asarray(cumulative, np.int32)
  n = perm.shape[1]
  if cum[-1] != n:
    raise ValueError(f"a sampling schedule must end at the {n} tokens, got cumulative {cum}")
  step_of_rank = np.searchsorted(cum, np.arange(n), side="right").astype(np.int32)  # [N]
  rank = inverse_perm(perm)
  step_of = jnp.asarray(step_of_rank)[rank]
  if known is not None:
    step_of = jnp.where(known, -1, step_of)
  return Plan(perm=perm, step_of=step_of, num_steps=len(cum))


def check_known(known, batch: int, n: int, grid: Optional[Tuple[int, int]] = None):
  """An inpainting mask must be bool [B, N] or [N] (or [H, W] / [B, H, W] of the grid)."""
  if known is None:
    return None
  known = jnp.asarray(known)
  shape = tuple(known.shape)
  if grid is not None and shape[-2:] == tuple(grid) and int(np.prod(grid)) == n:
    known = known.reshape(shape[:-2] + (n,))
  if known.ndim == 1:
    known = known[None]
  if known.ndim != 2 or known.shape[1] != n or known.shape[0] not in (1, batch):
    raise ValueError(f"inpainting mask `known` has shape {shape}; expected [{batch}, {n}], "
                     f"[{n}]" + (f" or [{batch}, {grid[0]}, {grid[1]}]" if grid else ""))
  return jnp.broadcast_to(known.astype(bool), (batch, n))


class Order:
  """Base class of the orders (the protocol every order implements).

  Attributes:
    name: registry name.
    mask_kind: the attention a model needs: 'causal', 'bidirectional' or 'block' (block-causal
      or dense patterns).
    causal: True when a prediction depends only on cells earlier in the order.
    confidence: True when sampling picks the next group from confidences (MaskGIT).
    models: the registered models that can run the order (empty: any whose mask kinds fit).
  """
  name = "order"
  mask_kind = "causal"
  causal = True
  confidence = False
  models: Tuple[str, ...] = ()

  def __init__(self, num_tokens: int, grid_positions, grid: Tuple[int, int]):
    self.num_tokens = int(num_tokens)
    self._grid_positions = np.asarray(grid_positions, np.int32)  # [N, 2]
    self.grid = tuple(grid)

  @property
  def grid_positions(self):
    return jnp.asarray(self._grid_positions)

  def train_layout(self, rng, batch: int, step=None, train: bool = True) -> Layout:
    raise NotImplementedError

  def sample_plan(self, rng, batch: int, known=None) -> Plan:
    raise NotImplementedError

  def sample_layout(self, plan: Plan, known) -> Layout:
    raise NotImplementedError

  def num_steps(self) -> int:
    raise NotImplementedError

  # -- the reveal rule (every sampler asks the order which cells a step fixes) ----------------
  def reveal_cells(self, step, known, plan: Plan, *, key=None, confidence=None,
             num_unknown_start=None):
    """bool [B, N]: the cells sampling step `step` reveals, given the cells already known
    [B, N] and the plan. Fixed-group orders (raster: the next cell; random / RandAR / ARPG /
    LPD / PAR / NAR: the next group) reveal the unknown cells with plan.step_of == step.
    Confidence orders override this and call `confidence()` -> [B, N] scores of the step's
    draws (key: their tie-breaking noise; num_unknown_start [B]: unknown cells before step 0).
    A scale or a block of cells is one more rule returning its cells."""
    del key, confidence, num_unknown_start
    return (plan.step_of == step) & ~known


def perm_layout(perm, mask: MaskSpec) -> Layout:
  """[class, x_perm0 ... x_perm(N-2)] predicting x_perm0 ... x_perm(N-1): next-token layout."""
  b, n = perm.shape
  src = jnp.concatenate([jnp.full((b, 1), SRC_CLASS, jnp.int32), perm[:, :-1]], axis=1)
  pos = jnp.concatenate([jnp.full((b, 1), -1, jnp.int32), perm[:, :-1]], axis=1)
  return Layout(src=src, pos=pos, tgt=perm, mask=mask, perm=perm)
