"""The Llama-style transformer stack shared by every generator.

Pre-norm blocks: RMSNorm -> attention -> residual, RMSNorm -> SwiGLU -> residual, no biases
(Touvron et al. 2023; LlamaGen, Sun et al. 2024). The ViT block of RAR and LPD (LayerNorm,
biases, GELU MLP) is the same stack with `norm='layernorm'`, `bias=True`, `mlp='gelu'`.
Options: QK-norm, adaLN conditioning
(DiT-style shift/scale/gate from a vector per sample or per token), residual/FFN dropout,
grouped-query attention, and the position encodings of `arjax.nn.rope` plus learned absolute
embeddings. The mask (causal, bidirectional, block-causal, prefix, ...) is a `MaskSpec` given by
the caller, so the stack never special-cases a paper.

Deep stacks: `scan_layers=True` stores the blocks' parameters stacked along a leading 'layers'
axis (one Block module whose every parameter is [N, ...]) and runs them with one `lax.scan`, so
compile time no longer grows with depth; KV caches are then one stacked dict carried through the
scan (updated in place when donated). `remat` names a `jax.checkpoint` policy applied to every
block (REMAT_POLICIES). `stack_block_params` / `unstack_block_params` convert parameter trees
between the two layouts (the loop layout is the default and what older checkpoints hold).

Mixed precision: the residual stream stays float32; blocks compute in `dtype` (bfloat16) and
their outputs are added to it in float32.

Legend: B batch, L length, D width, C conditioning width, S cache length, N layers.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from arjax.kernels.masks import MaskSpec
from arjax.nn import rope as rope_lib
from arjax.nn.attention import Attention, Cache, init_cache
from arjax.registry import Registry
from arjax.nn.layers import (NORMS, AdaLNModulation, Embed, GeluMLP, SwiGLU, make_norm, modulate,
                             swiglu_hidden_dim)
from arjax.parallel.activations import constrain

POSITION_ENCODINGS = ("rope1d", "rope2d", "learned", "none")
MLPS = ("swiglu", "gelu")
_HIDDEN = ("batch", "length", "embed")  # logical axes of the hidden states [B, L, D].
LAYERS_AXIS = "layers"                   # logical axis of stacked block parameters.

# `model.backbone.remat` -> jax.checkpoint policy ('none': no rematerialisation). What each keeps
# for the backward pass: nothing (recompute the whole block), the matmul outputs that have no
# batch dimension (weights-stationary dots), or every matmul output.
REMAT_POLICIES: Registry = Registry("remat policy")
REMAT_POLICIES.register("none")(None)
REMAT_POLICIES.register("nothing_saveable")(jax.checkpoint_policies.nothing_saveable)
REMAT_POLICIES.register("dots_with_no_batch_dims_saveable")(
    jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
REMAT_POLICIES.register("dots_saveable")(jax.checkpoint_policies.dots_saveable)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shape and options of the stack (built from `config.model.backbone`)."""
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: Optional[int] = None      # None: as many as query heads (no GQA).
  dim: int = 128
  mlp_dim: Optional[int] = None           # None: Llama's 2/3*4D rounded to `multiple_of`
                                          # (swiglu) or 4D (gelu).
  multiple_of: int = 256
  qk_norm: bool = False
  adaln: bool = False                     # condition every block on a vector (adaLN-Zero).
  cond_dim: Optional[int] = None          # width of that vector (default: dim).
  position: str = "rope2d"                # one of POSITION_ENCODINGS.
  rope_base: float = 10000.0
  rope_null: str = "zero"                 # rotation at position -1: 'zero' (LlamaGen) | 'identity'.
  max_positions: int = 0                  # table size for position='learned'.
  resid_dropout: float = 0.0
  ffn_dropout: float = 0.0
  norm_eps: float = 1e-5
  norm: str = "rmsnorm"                   # 'rmsnorm' (Llama) | 'layernorm' (ViT: RAR, LPD).
  mlp: str = "swiglu"                     # 'swiglu' (Llama) | 'gelu' (ViT).
  bias: bool = False                      # biases in attention, MLP and adaLN (ViT).
  dtype: str = "float32"                  # compute dtype ('bfloat16' for mixed precision).
  attention_impl: str = "auto"
  scan_layers: bool = False               # stacked block parameters run by one lax.scan.
  remat: str = "none"                     # jax.checkpoint policy per block (REMAT_POLICIES).

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict) -> "TransformerConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    extra = set(cfg.keys()) - known
    if extra:
      raise ValueError(f"unknown field(s) {sorted(extra)} in config.model.backbone; "
                       f"expected a subset of {sorted(known)}")
    out = cls(**{k: cfg[k] for k in cfg.keys()})
    out.validate()
    return out

  def validate(self):
    if self.position not in POSITION_ENCODINGS:
      raise ValueError(f"model.backbone.position={self.position!r}; expected one of "
                       f"{POSITION_ENCODINGS}")
    if self.dim % self.num_heads:
      raise ValueError(f"model.backbone.dim={self.dim} is not divisible by "
                       f"num_heads={self.num_heads}")
    if self.num_heads % self.kv_heads:
      raise ValueError(f"model.backbone.num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.kv_heads}")
    if self.position == "learned" and self.max_positions <= 0:
      raise ValueError("model.backbone.position='learned' needs max_positions > 0")
    if self.norm not in NORMS:
      raise ValueError(f"model.backbone.norm={self.norm!r}; expected one of {NORMS}")
    if self.mlp not in MLPS:
      raise ValueError(f"model.backbone.mlp={self.mlp!r}; expected one of {MLPS}")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"model.backbone.dtype={self.dtype!r}; expected float32|bfloat16|float16")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"model.backbone.remat={self.remat!r}; expected one of "
                       f"{REMAT_POLICIES.names()}")
    if not isinstance(self.scan_layers, bool):
      raise ValueError(f"model.backbone.scan_layers={self.scan_layers!r}; expected True or False")
    if self.num_layers < 1:
      raise ValueError(f"model.backbone.num_layers={self.num_layers}; expected >= 1")

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def hidden_dim(self) -> int:
    if self.mlp_dim:
      return self.mlp_dim
    return 4 * self.dim if self.mlp == "gelu" else swiglu_hidden_dim(self.dim, self.multiple_of)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def has_dropout(self) -> bool:
    return self.resid_dropout > 0 or self.ffn_dropout > 0


def make_mlp(cfg: TransformerConfig, *, rngs: nnx.Rngs, dropout_stream: bool = True):
  """The block's MLP: SwiGLU without biases (Llama) or GELU with `cfg.bias` (ViT)."""
  dt = cfg.compute_dtype
  if cfg.mlp == "gelu":
    return GeluMLP(cfg.dim, cfg.hidden_dim, rngs=rngs, dtype=dt, dropout=cfg.ffn_dropout,
                   use_bias=cfg.bias, dropout_stream=dropout_stream)
  return SwiGLU(cfg.dim, cfg.hidden_dim, rngs=rngs, dtype=dt, dropout=cfg.ffn_dropout,
                dropout_stream=dropout_stream)


class Block(nnx.Module):
  """One pre-norm transformer block. x [B, L, D], cond [B, C] or [B, L, C] -> [B, L, D].

  The residual sum keeps x's dtype (float32 from the Transformer); the sub-layers compute in
  `cfg.dtype`. With dropout_stream=False the block holds no RNG state and its dropout draws from
  the `dropout_key` given at call time (stacked blocks under `lax.scan`).
  """

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, dropout_stream: bool = True):
    dt = cfg.compute_dtype
    self.attn_norm = make_norm(cfg.norm, cfg.dim, rngs=rngs, eps=cfg.norm_eps)
    self.attn = Attention(cfg.dim, cfg.num_heads, cfg.kv_heads, rngs=rngs, qk_norm=cfg.qk_norm,
                          dtype=dt, impl=cfg.attention_impl, use_bias=cfg.bias, norm=cfg.norm,
                          norm_eps=cfg.norm_eps)
    self.mlp_norm = make_norm(cfg.norm, cfg.dim, rngs=rngs, eps=cfg.norm_eps)
    self.mlp = make_mlp(cfg, rngs=rngs, dropout_stream=dropout_stream)
    self.ada = (AdaLNModulation(cfg.cond_dim or cfg.dim, cfg.dim, 6, rngs=rngs, dtype=dt,
                                use_bias=cfg.bias) if cfg.adaln else None)
    drop = None
    if cfg.resid_dropout > 0:
      drop = (nnx.Dropout(cfg.resid_dropout, rngs=rngs) if dropout_stream
              else nnx.Dropout(cfg.resid_dropout))
    self.dropout = drop

  def _drop(self, x, deterministic, key=None):
    return x if self.dropout is None else self.dropout(x, deterministic=deterministic, rngs=key)

  def __call__(self, x, *, mask, rope, cond=None, cache=None, cache_index=None,
               deterministic=True, dropout_key=None):
    keys = [None] * 3 if dropout_key is None else list(jax.random.split(dropout_key, 3))
    if self.ada is not None:
      if cond is None:
        raise ValueError("this backbone has adaln=True and needs a conditioning vector `cond`")
      sh1, sc1, g1, sh2, sc2, g2 = self.ada(cond)
    h = self.attn_norm(x)
    if self.ada is not None:
      h = modulate(h, sh1, sc1)
    h, cache = self.attn(h, mask=mask, rope=rope, cache=cache, cache_index=cache_index)
    h = self._drop(h, deterministic, keys[0])
    x = x + (g1 * h if self.ada is not None else h).astype(x.dtype)
    h = self.mlp_norm(x)
    if self.ada is not None:
      h = modulate(h, sh2, sc2)
    h = self.mlp(h, deterministic=deterministic, dropout_key=keys[1])
    h = self._drop(h, deterministic, keys[2])
    x = x + (g2 * h if self.ada is not None else h).astype(x.dtype)
    return x, cache


class StackedBlocks(Block):
  """N blocks as one module: every parameter [N, ...] with the leading logical axis 'layers'.

  Built by `Transformer` when scan_layers=True and run by `Transformer.run_blocks`, which slices
  one layer's parameters per `lax.scan` step.
  """

  def __iter__(self):
    raise TypeError("model.backbone.scan_layers=True stacks the blocks into one module; run them "
                    "with Transformer.run_blocks(...) instead of iterating over `blocks`")


def _stack_blocks(blocks: Sequence[Block]) -> StackedBlocks:
  """Blocks with identical structure -> one StackedBlocks holding their stacked parameters."""
  gdef, _ = nnx.split(blocks[0])
  states = [nnx.split(b)[1] for b in blocks]

  def stack(*vs):
    if not isinstance(vs[0], nnx.Param):
      raise TypeError(f"scan_layers: a block holds a non-parameter variable "
                      f"{type(vs[0]).__name__}; only parameters can be stacked")
    axes = vs[0].get_metadata().get("logical_axes")
    return vs[0].replace(jnp.stack([v[...] for v in vs]),
                         logical_axes=None if axes is None else (LAYERS_AXIS,) + tuple(axes))

  stacked = jax.tree.map(stack, *states, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(gdef, stacked)


class Transformer(nnx.Module):
  """Stack of blocks plus a final norm.

  __call__(x [B, L, D], positions, mask) -> (h [B, L, D] float32, caches). `positions`: int
  [B, L] for 'rope1d'/'learned' and [B, L, 2] (row, col) for 'rope2d'; -1 marks a token without
  a position. `cache_index`: scalar or int32 [B] (per-sequence cache slots).
  """

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    if cfg.scan_layers:
      # Built one by one with the same RNG draws as the loop layout (same seed, same values),
      # then stacked; the stacked blocks hold no RNG state (dropout keys come in per layer).
      self.blocks = _stack_blocks([StackedBlocks(cfg, rngs=rngs, dropout_stream=False)
                                   for _ in range(cfg.num_layers)])
      self.rngs = rngs if cfg.has_dropout else None
    else:
      self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.norm = make_norm(cfg.norm, cfg.dim, rngs=rngs, eps=cfg.norm_eps)
    self.pos_embed = (Embed(cfg.max_positions, cfg.dim, rngs=rngs, axes=(None, "embed"))
                      if cfg.position == "learned" else None)

  def rope_tables(self, positions) -> Optional[Tuple[jax.Array, jax.Array]]:
    cfg = self.cfg
    if cfg.position == "rope1d":
      if positions.ndim != 2:
        raise ValueError(f"rope1d positions must be [B, L], got shape {positions.shape}")
      return rope_lib.rope_1d(positions, cfg.head_dim, base=cfg.rope_base,
                              null_rotation=cfg.rope_null)
    if cfg.position == "rope2d":
      if positions.ndim != 3 or positions.shape[-1] != 2:
        raise ValueError(f"rope2d positions must be [B, L, 2] (row, col), got {positions.shape}")
      return rope_lib.rope_2d(positions[..., 0], positions[..., 1], cfg.head_dim,
                              base=cfg.rope_base, null_rotation=cfg.rope_null)
    return None

  def init_cache(self, batch: int, length: int, dtype=None) -> Union[List[Cache], Cache]:
    """Zero KV caches: a list of N {'k', 'v'} [B, S, Hkv, K] (loop layout), or one dict of
    [N, B, S, Hkv, K] arrays (scan_layers)."""
    dtype = dtype or self.cfg.compute_dtype
    cfg = self.cfg
    if cfg.scan_layers:
      one = init_cache(batch, length, cfg.kv_heads, cfg.head_dim, dtype)
      return {k: jnp.zeros((cfg.num_layers,) + v.shape, v.dtype) for k, v in one.items()}
    return [init_cache(batch, length, cfg.kv_heads, cfg.head_dim, dtype)
            for _ in range(cfg.num_layers)]

  def run_blocks(self, x, *, mask: MaskSpec, rope, cond=None, caches=None, cache_index=None,
                 deterministic: bool = True):
    """The N blocks on the residual stream x [B, L, D] (no final norm) -> (x, caches).

    Loop layout: a Python loop over the blocks; scan layout: one `lax.scan` over the stacked
    parameters, the caches carried. Each block is wrapped in the `remat` policy.
    """
    policy = REMAT_POLICIES.get(self.cfg.remat, field="model.backbone.remat")
    kw = dict(mask=mask, rope=rope, cond=cond, cache_index=cache_index,
              deterministic=deterministic)
    if self.cfg.scan_layers:
      return self._scan_blocks(x, caches, policy, kw)
    if caches is not None and len(caches) != len(self.blocks):
      raise ValueError(f"got {len(caches)} KV caches for {len(self.blocks)} blocks")

    def run(block, x, cache):
      return block(x, cache=cache, **kw)

    if self.cfg.remat != "none":
      run = nnx.remat(run, policy=policy)
    new_caches = [] if caches is not None else None
    for i, block in enumerate(self.blocks):
      x, c = run(block, x, None if caches is None else caches[i])
      x = constrain(x, _HIDDEN)  # keep the batch split under FSDP (arjax.parallel.activations).
      if new_caches is not None:
        new_caches.append(c)
    return x, new_caches

  def _scan_blocks(self, x, caches, policy, kw):
    n = self.cfg.num_layers
    gdef, params = nnx.split(self.blocks)
    keys = None
    if self.rngs is not None and not kw["deterministic"]:
      keys = jax.random.split(self.rngs.dropout(), n)
    if caches is not None:
      shapes = {k: v.shape[0] for k, v in caches.items()}
      if set(shapes) != {"k", "v"} or set(shapes.values()) != {n}:
        raise ValueError(f"scan_layers caches must be {{'k', 'v'}} of [{n}, B, S, Hkv, K]; got "
                         f"leading sizes {shapes} (a loop-layout cache list?)")

    def body(carry, xs):
      h, kv = carry
      layer_params, i, key = xs
      block = nnx.merge(gdef, layer_params)
      cache = None if kv is None else jax.tree.map(
          lambda a: jax.lax.dynamic_index_in_dim(a, i, 0, keepdims=False), kv)
      h, cache = block(h, cache=cache, dropout_key=key, **kw)
      h = constrain(h, _HIDDEN)
      if kv is not None:
        # The whole stacked cache is the carry, so a donated cache is updated in place.
        kv = jax.tree.map(lambda a, c: jax.lax.dynamic_update_index_in_dim(a, c, i, 0), kv, cache)
      return (h, kv), None

    if policy is not None:
      body = jax.checkpoint(body, policy=policy)
    (x, caches), _ = jax.lax.scan(body, (x, caches), (params, jnp.arange(n), keys))
    return x, caches

  def __call__(self, x, *, positions, mask: MaskSpec, cond=None,
               caches: Optional[Union[Sequence[Cache], Cache]] = None, cache_index=None,
               deterministic: bool = True):
    if self.pos_embed is not None:
      flat = positions if positions.ndim == 2 else positions[..., 0]
      emb = self.pos_embed(jnp.maximum(flat, 0)) * (flat >= 0)[..., None]
      x = x.astype(jnp.float32) + emb.astype(jnp.float32)
    rope = self.rope_tables(positions)
    # The residual stream stays float32; the blocks compute in cfg.dtype.
    x = constrain(x.astype(jnp.float32), _HIDDEN)
    x, new_caches = self.run_blocks(x, mask=mask, rope=rope, cond=cond, caches=caches,
                                    cache_index=cache_index, deterministic=deterministic)
    return self.norm(x), new_caches


# -- parameter layouts ---------------------------------------------------------------------------
BLOCK_PATHS = (("backbone", "blocks"),)


def _is_loop_layout(blocks: Dict) -> bool:
  return isinstance(blocks, dict) and bool(blocks) and all(
      str(k).isdigit() for k in blocks)


def _at(tree: Dict, path: Sequence[str]):
  node = tree
  for p in path:
    if not isinstance(node, dict) or p not in node:
      raise KeyError(f"parameter tree has no {'/'.join(path)} (missing {p!r})")
    node = node[p]
  return node


def _replaced(tree: Dict, path: Sequence[str], value) -> Dict:
  out = dict(tree)
  out[path[0]] = value if len(path) == 1 else _replaced(tree[path[0]], path[1:], value)
  return out


def stack_block_params(params: Dict, paths: Sequence[Sequence[str]] = BLOCK_PATHS) -> Dict:
  """Loop layout {'0': {...}, '1': {...}} -> scan layout {...} of [N, ...] arrays, at each of
  `paths` (nested-dict parameter trees, e.g. `FunctionalModel.initial_params()` or a restored
  checkpoint's params or EMA). Works on numpy and jax arrays; other subtrees are untouched."""
  import numpy as np
  for path in paths:
    blocks = _at(params, path)
    if not _is_loop_layout(blocks):
      raise ValueError(f"{'/'.join(path)} is not in the loop layout (keys 0..N-1); already "
                       "stacked?")
    order = sorted(blocks, key=lambda k: int(k))
    if [int(k) for k in order] != list(range(len(order))):
      raise ValueError(f"{'/'.join(path)} has block keys {order}; expected 0..{len(order) - 1}")
    xp = np if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(blocks)) else jnp
    stacked = jax.tree.map(lambda *xs: xp.stack(xs), *[blocks[k] for k in order])
    params = _replaced(params, path, stacked)
  return params


def unstack_block_params(params: Dict, paths: Sequence[Sequence[str]] = BLOCK_PATHS,
                         keys: str = "int") -> Dict:
  """Scan layout (leading [N] axis) -> loop layout {0: {...}, ..., N-1: {...}} at `paths`.
  keys='int' gives the integer keys `nnx.to_pure_dict` uses, 'str' the strings of a restored
  checkpoint."""
  for path in paths:
    blocks = _at(params, path)
    if _is_loop_layout(blocks):
      raise ValueError(f"{'/'.join(path)} is already in the loop layout")
    sizes = {x.shape[0] for x in jax.tree.leaves(blocks)}
    if len(sizes) != 1:
      raise ValueError(f"{'/'.join(path)}: stacked parameters disagree on the number of layers "
                       f"{sorted(sizes)}")
    n = sizes.pop()
    key = (lambda i: i) if keys == "int" else str
    params = _replaced(params, path, {key(i): jax.tree.map(lambda x: x[i], blocks)
                                      for i in range(n)})
  return params
