"""HMAR: Markovian next-scale prediction with a masked in-scale refinement branch (Kumbong et al.
2025, "HMAR: Efficient Hierarchical Masked AutoRegressive Image Generation"; the layout of the
released code, NVlabs/HMAR models/hmar.py, mp.py, quant.py, mp_trainer.py).

VAR (arjax.models.var) under the Markovian block-diagonal mask (order.markovian=True,
order.markov_window=0: scale k attends to its own slots only; its input, the running f_hat
area-downsampled to s_k, already carries scale k-1 and everything before it), plus:

  refinement branch  the last R = refine_blocks blocks duplicated (`refine_blocks`) with their own
                     head (`refine_head`); it shares the first depth - R blocks with next-scale
                     prediction. Its input at scale k:
                       Linear(area(f_hat_{<k}, s_k)) + [mask_embed where masked, else
                       W area(phi_k(bicubic(e[q_k], H)), s_k)]  + level + position
                     (W: the word embedding without its bias; the unmasked cells show their own
                     code map), and it predicts the masked cells of scale k.
  training           p ~ U(0, 1); at every scale k > 1, ceil(s_k^2 p) cells chosen uniformly
                     (the same cells for the whole batch, as mp_trainer) are masked; loss:
                     cross-entropy over the masked cells, each weighted 1 / #masked
                     ('mask_unweighted'). HMAR fine-tunes this branch with the base frozen; the
                     arjax trainer has no frozen parameters, so 'hmar' trains both losses at once
                     (loss = next-scale loss + refine_weight x masked loss) with the refinement
                     shared parts (blocks, embeddings) entering the branch frozen: its loss moves
                     only the branch's blocks, mask_embed and its head, as HMAR's fine-tuning.
  sampling           the mask schedule: per scale a list of counts summing to s_k^2 (HMAR's
                     default at 256: [1] [1,3] [1,1,2,5] [16] [25] [36] [64] [100] [169] [256]).
                     Step 0 is next-scale prediction (all s_k^2 cells drawn); after step j the
                     sum(schedule_k[j+1:]) drawn cells of lowest probability are masked again
                     and redrawn by the refinement branch at step j + 1 (`refine_counts`).
                     HMAR's refinement steps are unguided (t = cfg 1e-6): the conditional rows.

Legend: B batch, N tokens, K scales, C width, V vocabulary, Dv code dim, s side of a scale.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from arjax.heads.base import token_metrics
from arjax.kernels.masks import MaskSpec
from arjax.models.registry import MODELS, model_fields
from arjax.models.var import VAR, VarBlock, VarFields, VarHead, _normal
from arjax.nn.layers import make_param
from arjax.orders import register_support
from arjax.tokenizers.resample import area_resize


@dataclasses.dataclass(frozen=True)
class HmarFields(VarFields):
  """`config.model` of 'hmar': VAR's fields plus the refinement branch."""
  refine_blocks: int = 8          # R: last blocks duplicated into the refinement branch.
  refine_weight: float = 1.0      # weight of the masked loss next to the next-scale loss.
  mask_schedule: str = ""         # per scale ';'-separated, counts ','-separated ("" none).


def parse_schedule(text: str, scales: Sequence[int], where: str = "model.mask_schedule"
                   ) -> Tuple[Tuple[int, ...], ...]:
  """'1;1,3;1,1,2,5;16;...' -> per scale the counts of each step; "" -> one step per scale.
  Each scale's counts must be positive and sum to s_k^2."""
  if not text:
    return tuple((s * s,) for s in scales)
  parts = text.split(";")
  if len(parts) != len(scales):
    raise ValueError(f"{where}={text!r} has {len(parts)} scales, order.scales={list(scales)} "
                     f"has {len(scales)}")
  out = []
  for k, (part, s) in enumerate(zip(parts, scales)):
    try:
      counts = tuple(int(x) for x in part.split(","))
    except ValueError:
      raise ValueError(f"{where}={text!r}: scale {k + 1} {part!r} is not a list of integers")
    if any(c < 1 for c in counts) or sum(counts) != s * s:
      raise ValueError(f"{where}={text!r}: scale {k + 1} (side {s}) counts {list(counts)} must "
                       f"be positive and sum to {s * s}")
    if k == 0 and len(counts) > 1:
      raise ValueError(f"{where}={text!r}: scale 1 is drawn in one step (its input is the "
                       f"class), got counts {list(counts)}")
    out.append(counts)
  return tuple(out)


def refine_counts(counts: Sequence[int]) -> List[int]:
  """The cells masked again after each step of a scale: after step j, sum(counts[j+1:])."""
  return [sum(counts[j + 1:]) for j in range(len(counts))]


def frozen(module: nnx.Module) -> nnx.Module:
  """A copy of `module` whose parameters carry no gradient (inputs still do)."""
  graphdef, state = nnx.split(module)
  return nnx.merge(graphdef, jax.tree.map(jax.lax.stop_gradient, state))


def train_mask_counts(scales: Sequence[int], p) -> List:
  """Masked cells per scale in training: 0 at scale 1, ceil(s^2 p) after."""
  return [0] + [jnp.ceil(s * s * p).astype(jnp.int32) for s in scales[1:]]


class HMAR(VAR):
  """See the module docstring."""

  FIELDS = HmarFields

  def __init__(self, config, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    m = model_fields(HmarFields, config)
    if not (self.order.markovian and self.order.markov_window == 0):
      raise ValueError("model 'hmar' runs the Markovian block-diagonal mask: set "
                       "order.markovian=True and order.markov_window=0")
    if not 1 <= m.refine_blocks <= m.depth:
      raise ValueError(f"model.refine_blocks={m.refine_blocks}: expected 1 .. model.depth="
                       f"{m.depth}")
    self.num_refine = m.refine_blocks
    self.refine_weight = m.refine_weight
    self.schedule = parse_schedule(m.mask_schedule, self.scales)
    c = self.width
    std = m.init_std if m.init_std > 0 else math.sqrt(1.0 / c / 3.0)
    rate = self.drop_path
    rates = [rate * i / max(m.depth - 1, 1) for i in range(m.depth)]
    self.mask_embed = make_param(rngs, _normal(std), (c,), ("embed",))
    self.refine_blocks = nnx.List([
        VarBlock(c, self.num_heads, int(round(c * m.mlp_ratio)), rngs=rngs, std=std,
                 depth=m.depth, drop_path=rates[i], eps=m.norm_eps)
        for i in range(m.depth - m.refine_blocks, m.depth)])
    self.refine_head = VarHead(c, self.tokenizer.vocab_size, rngs=rngs, std=std, eps=m.norm_eps)

  # -- the refinement branch ---------------------------------------------------------------------
  def own_codes(self, k: int, idx):
    """Scale k's own contribution at its side: idx int32 [B, s, s] -> [B, s^2, Dv],
    area(phi_k(bicubic(e[q_k], H)), s_k) (HMAR's idxBl_to_mask_input)."""
    vq = self.scale_quantizer()
    e = jax.lax.stop_gradient(vq.codebook[...])
    s = self.scales[k]
    h = vq._upsample(k, jnp.take(e, idx, axis=0))
    return jax.lax.stop_gradient(area_resize(h, s).reshape(idx.shape[0], s * s, vq.code_dim))

  def refine_embed(self, ns_inputs, own, masked):
    """ns [B, L, Dv], own [B, L, Dv], masked bool [B or 1, L] -> [B, L, C] (no position).
    The shared word embedding enters frozen (HMAR fine-tunes mask_embed, not word_embed)."""
    sg = jax.lax.stop_gradient
    kernel, bias = sg(self.word_embed.kernel[...]), sg(self.word_embed.bias[...])
    own_we = jnp.dot(own.astype(jnp.float32), kernel)
    own_we = jnp.where(masked[..., None], self.mask_embed[...], own_we)
    return jnp.dot(ns_inputs.astype(jnp.float32), kernel) + bias + own_we

  def _refine_tail(self, x, cond, mask, train=False, key=None):
    base = self.depth - self.num_refine
    keys = [None] * self.depth if key is None else list(jax.random.split(key, self.depth))
    cond = jax.lax.stop_gradient(cond)
    for blk, k in zip(self.blocks[:base], keys):
      # Frozen copies: the masked loss reaches mask_embed through the shared blocks, as HMAR's
      # fine-tuning with the base frozen, but never moves them.
      x, _ = frozen(blk)(x, cond, mask, key=k if train else None)
    for blk, k in zip(self.refine_blocks, keys[base:]):
      x, _ = blk(x, cond, mask, key=k if train else None)
    return self.refine_head(x, cond)

  def refine_forward(self, tokens, labels, masked, *, train: bool = False, key=None):
    """Teacher-forced refinement over all scales: tokens int32 [B, N], masked bool [B or 1, N]
    (slot 0, scale 1, is never masked) -> Categorical over [B, N]."""
    ns = self.next_scale_inputs(tokens)                                   # [B, N - 1, Dv]
    maps = self.scale_quantizer().split(tokens)
    own = jnp.concatenate([self.own_codes(k, q) for k, q in enumerate(maps)][1:], 1)
    cond = self.cond(labels)
    sos = cond[:, None] + self.pos_start[...][None]
    x = jnp.concatenate([sos, self.refine_embed(ns, own, masked[:, 1:])], 1)
    lvl = jnp.take(self.level_embed[...], self.order.level_ids, axis=0)
    x = x + jax.lax.stop_gradient(lvl + self.pos_embed[...])[None]
    x = x.at[:, 0].set(jax.lax.stop_gradient(x[:, 0]))
    return self._refine_tail(x, cond, self.order.train_mask(), train, key)

  def refine_scale(self, k: int, ns_inputs, idx, masked, labels):
    """One refinement pass of scale k >= 1 (static): ns_inputs [B, s^2, Dv] (the next-scale
    input of scale k), idx int32 [B, s, s] (the cells drawn so far), masked bool [B, s^2] ->
    Categorical over [B, s^2]. The block-diagonal mask needs no cache: scale k sees itself."""
    a, e = self.order.bounds[k]
    cond = self.cond(labels)
    x = self.refine_embed(ns_inputs, self.own_codes(k, idx), masked)
    x = x + jax.lax.stop_gradient(self.level_embed[...][k] + self.pos_embed[...][a:e])[None]
    return self._refine_tail(x, cond, MaskSpec(kind="bidirectional"))

  def train_mask(self, key):
    """bool [1, N]: ceil(s_k^2 p) uniformly chosen cells of each scale k > 1, p ~ U(0, 1)."""
    kp, kc = jax.random.split(key)
    p = jax.random.uniform(kp)
    counts = train_mask_counts(self.scales, p)
    u = jax.random.uniform(kc, (self.num_tokens,))
    parts = [jnp.zeros((self.scales[0] ** 2,), bool)]
    for k in range(1, len(self.scales)):
      a, e = self.order.bounds[k]
      rank = jnp.argsort(jnp.argsort(u[a:e]))
      parts.append(rank < counts[k])
    return jnp.concatenate(parts)[None]

  def loss(self, batch: Dict[str, jax.Array], *, train: bool
           ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    loss, metrics = super().loss(batch, train=train)
    if self.refine_weight == 0:
      return loss, metrics
    tokens = self.batch_tokens(batch).astype(jnp.int32)
    labels = batch["label"].astype(jnp.int32)
    if train and self.class_dropout > 0:
      keep = jax.random.uniform(self.rngs.dropout(), labels.shape) >= self.class_dropout
      labels = jnp.where(keep, labels, self.null_class)
    masked = self.train_mask(self.rngs.dropout() if train else jax.random.key(0))
    key = self.rngs.dropout() if train and self.drop_path > 0 else None
    dist = self.refine_forward(tokens, labels, masked, train=train, key=key)
    w = jnp.broadcast_to(masked, tokens.shape).astype(jnp.float32)
    if "mask" in batch:
      w = w * batch["mask"][:, None].astype(jnp.float32)
    refine_loss, per_token = dist.loss(tokens, weights=w)
    refine = token_metrics(dist, refine_loss, per_token, tokens, w)
    metrics = dict(metrics, **{f"refine_{k}": v for k, v in refine.items()})
    metrics["next_scale_loss"] = loss
    total = loss + self.refine_weight * refine_loss
    metrics["loss"] = total
    return total, metrics

  def refine_schedule(self, order) -> Tuple[Tuple[int, ...], ...]:
    """The sampler's hook: per scale the step counts (the model's scales only)."""
    return self.schedule


register_support("hmar", mask_kinds=("block",), orders=("scales",))


@MODELS.register("hmar", fields=HmarFields)
def _build(config, *, rngs):
  return HMAR(config, rngs=rngs)
