"""The head contract: hidden states -> a distribution over one token per position.

A head is an `nnx.Module` registered in `HEADS` under the name `config.model.head.name`, with its
config fields declared by a frozen dataclass (`HEADS.register(name, fields=...)`, read by
`build_head` through `arjax.registry.read_fields`). It declares the tokens it produces:

  token_shape   trailing shape of one token: () for a categorical head, (C,) for continuous ones.
  token_dtype   int32 for categorical, float32 for continuous tokens.

Samplers allocate their token buffers [B, N, *token_shape] of token_dtype from these.

`head(h [B, L, D], cond=None)` returns a `Distribution`: a pytree (flax.struct dataclass) whose
array leaves all have the leading axes [B, L], so samplers can double it for classifier-free
guidance, split it, gather its positions and scatter it to the grid with `jax.tree.map`. Its
static fields (options such as label smoothing) are not leaves. A Distribution answers:

  sample(key, *, temperature, **head_options) -> tokens [B, L, *token_shape] of token_dtype.
  loss(targets, key=None, weights=None) -> (scalar weighted-mean training loss, per-token [B, L]).
      The per-token value is the NLL in nats where the head has one (categorical: the
      unsmoothed cross-entropy, so nll/bits-per-dim metrics ignore label smoothing); heads
      without a likelihood (diffusion, flow matching) return their per-token training loss and
      draw their noise from `key` (with room for a `diffusion_batch_mul` repetition inside).
  log_prob(x) -> [B, L] log-density / log-probability where tractable; heads without one raise
      ValueError naming the head.
  confidence(x, *, temperature, **head_options) -> [B, L]: how sure the head is of the draw x
      (log-probability under the sampling options), for confidence-ordered reveal rules.
  guide(uncond, scale) -> the guided Distribution (classifier-free guidance; scale a scalar or
      [B]): logits uncond + s (cond - uncond) for categorical heads, GIVT's density rule for the
      GMM. Iterative heads (diffusion, flow) return a Distribution whose `sample` runs the
      combined inner loop (guiding the noise / velocity prediction at each inner step).

`check_targets` gives the one-line error for targets of the wrong dtype or shape (chex asserts at
trace time); the base class checks `loss`'s weights ([B, L]) before any head's own `loss` runs.

Legend: B batch, L positions, D width, C channels of a continuous token.
"""
from __future__ import annotations

import math
from typing import Tuple

import chex
import jax
import jax.numpy as jnp
from flax import struct

from arjax.registry import Registry, read_fields

HEADS: Registry = Registry("head")


def weighted_mean(per_token, weights=None):
  """Mean of per_token [B, L] under weights [B, L] (None: all ones); 0 for zero total weight."""
  if weights is None:
    weights = jnp.ones_like(per_token)
  return (per_token * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def check_targets(targets, token_shape: Tuple[int, ...], token_dtype, lead: Tuple[int, ...],
                  head: str):
  """Raises one line naming both shapes unless targets are [*lead, *token_shape] of the head's
  kind of dtype (integer for categorical heads, floating for continuous ones). chex asserts on
  static shapes and dtypes: under jit they run once, at trace time."""
  want = tuple(lead) + tuple(token_shape)
  kind = int if jnp.issubdtype(token_dtype, jnp.integer) else float
  try:
    if not hasattr(targets, "shape"):
      raise AssertionError
    chex.assert_shape(targets, want)
    chex.assert_type(targets, kind)
  except AssertionError:
    got = (f"{list(targets.shape)} of {targets.dtype}" if hasattr(targets, "shape")
           else type(targets).__name__)
    raise ValueError(f"head {head!r} takes targets {list(want)} of {jnp.dtype(token_dtype).name}, "
                     f"got {got}") from None


def check_weights(weights, lead: Tuple[int, ...], head: str):
  """Loss weights must be None or [*lead] (one per position); one line otherwise."""
  if weights is None:
    return
  try:
    chex.assert_shape(weights, tuple(lead))
  except AssertionError:
    raise ValueError(f"head {head!r} takes loss weights {list(lead)} (one per position), got "
                     f"{list(getattr(weights, 'shape', ()))}") from None


class Distribution(struct.PyTreeNode):
  """Base class of the per-position distributions a head returns (see the module docstring)."""

  head_name = "distribution"

  def __init_subclass__(cls, **kwargs):
    # Each head's own `loss` checks its weights first (its targets it checks itself, with
    # check_targets, against its own token shape).
    super().__init_subclass__(**kwargs)
    own = cls.__dict__.get("loss")
    if own is None or getattr(own, "checks_weights", False):
      return

    def loss(self, targets, key=None, weights=None):
      check_weights(weights, self.lead_shape, self.head_name)
      return own(self, targets, key=key, weights=weights)

    loss.__doc__, loss.checks_weights = own.__doc__, True
    cls.loss = loss

  @property
  def lead_shape(self) -> Tuple[int, ...]:
    """[B, L] of this distribution (from its first leaf)."""
    return tuple(jax.tree.leaves(self)[0].shape[:2])

  def sample(self, key, *, temperature: float = 1.0, **options):
    raise NotImplementedError

  def loss(self, targets, key=None, weights=None):
    raise NotImplementedError

  def log_prob(self, x):
    raise ValueError(f"head {self.head_name!r} has no tractable log-probability")

  def confidence(self, x, *, temperature: float = 1.0, **options):
    return self.log_prob(x)

  def guide(self, uncond: "Distribution", scale) -> "Distribution":
    raise NotImplementedError


class GuidedHead(Distribution):
  """Base of the guided continuous heads whose network takes a condition `c` (diffusion, flow,
  shortcut, global_diffusion): CFG mixes the conditional and unconditional outputs inside the
  head's sampling loop. cond: the conditional distribution (holding `c` [B, L, ...] and the
  network), uncond_c: the unconditional condition of the same shape, scale [B, L]. A guided
  head only samples."""
  cond: Distribution
  uncond_c: jax.Array
  scale: jax.Array

  @classmethod
  def of(cls, cond, uncond, scale):
    """`cond.guide(uncond, scale)`: scale scalar, [B] or [B, L]."""
    s = broadcast_scale(scale, cond.c[..., 0])
    return cls(cond=cond, uncond_c=uncond.c,
               scale=jnp.broadcast_to(s, cond.c.shape[:2]).astype(jnp.float32))

  def both(self, fn, x, *args):
    """(conditional, unconditional) outputs of fn(x, *args, c) in one call on both halves."""
    b = x.shape[0]
    out = fn(jnp.concatenate([x, x]), *args, jnp.concatenate([self.cond.c, self.uncond_c]))
    return out[:b], out[b:]

  def mix(self, out_c, out_u):
    """CFG: out_u + s (out_c - out_u), s [B, L] over the trailing channels."""
    return out_u + self.scale[..., None] * (out_c - out_u)

  def loss(self, targets, key=None, weights=None):
    raise ValueError(f"a guided {self.cond.head_name} head is for sampling; train the "
                     "conditional one")

  def guide(self, uncond, scale):
    raise ValueError(f"a guided {self.cond.head_name} head is already guided")


def split_halves(dist):
  """A distribution over a doubled batch [2B, ...] -> (first half, second half)."""
  b = jax.tree.leaves(dist)[0].shape[0] // 2
  return jax.tree.map(lambda x: x[:b], dist), jax.tree.map(lambda x: x[b:], dist)


def broadcast_scale(scale, like):
  """Scale scalar or [B] -> broadcastable against `like` [B, ...]."""
  s = jnp.asarray(scale, jnp.float32)
  if s.ndim == 1:
    s = s.reshape(s.shape + (1,) * (like.ndim - 1))
  return s


def build_head(config, dim: int, tokenizer, *, rngs, dtype=None, where: str = "config.model.head"):
  """The head named by config.model.head.name with its declared fields, for a tokenizer with
  `vocab_size` (categorical) or `token_dim` (continuous tokens)."""
  node = head_node(config)
  name = node["name"]
  cls = HEADS.get(name, field=f"{where}.name")
  fields_cls = HEADS.fields(name)
  fields = read_fields(fields_cls, node, f"head {name!r} ({where})")
  return cls(dim, tokenizer, fields, rngs=rngs, dtype=dtype)


def token_metrics(dist: Distribution, loss, per_token, targets, weights):
  """The generators' metrics of one batch: loss, nll (nats per token), bits_per_dim (bits per
  token, as the trainer's evaluation reports it), bits_per_channel (continuous tokens of C
  channels: bits per channel, a density that can be negative), accuracy (categorical heads)
  and num_tokens. per_token [B, L] from `dist.loss`."""
  w = weights
  denom = jnp.maximum(w.sum(), 1.0)
  nll = (per_token * w).sum() / denom
  out = {"loss": loss, "nll": nll, "bits_per_dim": nll / jnp.log(2.0)}
  dims = int(math.prod(targets.shape[2:]))
  if dims > 1:
    out["bits_per_channel"] = nll / (dims * jnp.log(2.0))
  if hasattr(dist, "argmax"):
    out["accuracy"] = ((dist.argmax() == targets) * w).sum() / denom
  out["num_tokens"] = w.sum()
  return out


def head_node(config):
  """config.model.head; a run written before heads had their own node (model.head = 'name',
  model.label_smoothing beside it) reads as that node, so its config.json still restores."""
  node = config.model.head
  if isinstance(node, str):
    node = {"name": node}
    if node["name"] == "categorical":
      node["label_smoothing"] = float(config.model.get("label_smoothing", 0.0))
  return node


def head_is_continuous(config) -> bool:
  """Whether the head named by config.model.head.name produces continuous (float) tokens."""
  cls = HEADS.get(head_node(config)["name"], field="config.model.head.name")
  return not jnp.issubdtype(cls.token_dtype, jnp.integer)


def describe_tokenizer(tokenizer) -> str:
  """'PixelTokenizer with vocab_size=4, token_dim=0': a tokenizer as the head messages name it."""
  return (f"{type(tokenizer).__name__} with vocab_size={getattr(tokenizer, 'vocab_size', None)}, "
          f"token_dim={getattr(tokenizer, 'token_dim', 0)}")


def continuous_heads():
  """The continuous heads any model can take (a head with `only_for_model` set is left out)."""
  return [n for n in HEADS.names() if not jnp.issubdtype(HEADS.get(n).token_dtype, jnp.integer)
          and not getattr(HEADS.get(n), "only_for_model", None)]


def continuous_token_dim(tokenizer, head: str) -> int:
  """C of a continuous tokenizer (its `token_dim`); one line naming the head and the tokenizer
  otherwise."""
  c = int(getattr(tokenizer, "token_dim", 0) or 0)
  if c <= 0:
    raise ValueError(f"head {head!r} is a continuous head and needs continuous tokens (a "
                     f"tokenizer with token_dim > 0), got {describe_tokenizer(tokenizer)}: use "
                     f"model.head.name='categorical' for discrete tokens")
  return c
