"""The Llama-style transformer stack shared by every generator.

Pre-norm blocks: RMSNorm -> attention -> residual, RMSNorm -> SwiGLU -> residual, no biases
(Touvron et al. 2023; LlamaGen, Sun et al. 2024). The ViT block of RAR and LPD (LayerNorm,
biases, GELU MLP) is the same stack with `norm='layernorm'`, `bias=True`, `mlp='gelu'`.
Options: QK-norm, adaLN conditioning
(DiT-style shift/scale/gate from a vector per sample or per token), residual/FFN dropout,
grouped-query attention, and the position encodings of `arjax.nn.rope` plus learned absolute
embeddings. The mask (causal, bidirectional, block-causal, prefix, ...) is a `MaskSpec` given by
the caller, so the stack never special-cases a paper.

Legend: B batch, L length, D width, C conditioning width, S cache length.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from arjax.kernels.masks import MaskSpec
from arjax.nn import rope as rope_lib
from arjax.nn.attention import Attention, Cache, init_cache
from arjax.nn.layers import (NORMS, AdaLNModulation, Embed, GeluMLP, SwiGLU, make_norm, modulate,
                             swiglu_hidden_dim)
from arjax.parallel.activations import constrain

POSITION_ENCODINGS = ("rope1d", "rope2d", "learned", "none")
MLPS = ("swiglu", "gelu")
_HIDDEN = ("batch", "length", "embed")  # logical axes of the hidden states [B, L, D].


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


def make_mlp(cfg: TransformerConfig, *, rngs: nnx.Rngs):
  """The block's MLP: SwiGLU without biases (Llama) or GELU with `cfg.bias` (ViT)."""
  dt = cfg.compute_dtype
  if cfg.mlp == "gelu":
    return GeluMLP(cfg.dim, cfg.hidden_dim, rngs=rngs, dtype=dt, dropout=cfg.ffn_dropout,
                   use_bias=cfg.bias)
  return SwiGLU(cfg.dim, cfg.hidden_dim, rngs=rngs, dtype=dt, dropout=cfg.ffn_dropout)


class Block(nnx.Module):
  """One pre-norm transformer block. x [B, L, D], cond [B, C] or [B, L, C] -> [B, L, D]."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    dt = cfg.compute_dtype
    self.attn_norm = make_norm(cfg.norm, cfg.dim, rngs=rngs, eps=cfg.norm_eps)
    self.attn = Attention(cfg.dim, cfg.num_heads, cfg.kv_heads, rngs=rngs, qk_norm=cfg.qk_norm,
                          dtype=dt, impl=cfg.attention_impl, use_bias=cfg.bias, norm=cfg.norm,
                          norm_eps=cfg.norm_eps)
    self.mlp_norm = make_norm(cfg.norm, cfg.dim, rngs=rngs, eps=cfg.norm_eps)
    self.mlp = make_mlp(cfg, rngs=rngs)
    self.ada = (AdaLNModulation(cfg.cond_dim or cfg.dim, cfg.dim, 6, rngs=rngs, dtype=dt,
                                use_bias=cfg.bias) if cfg.adaln else None)
    self.dropout = nnx.Dropout(cfg.resid_dropout, rngs=rngs) if cfg.resid_dropout > 0 else None

  def _drop(self, x, deterministic):
    return x if self.dropout is None else self.dropout(x, deterministic=deterministic)

  def __call__(self, x, *, mask, rope, cond=None, cache=None, cache_index=None,
               deterministic=True):
    if self.ada is not None:
      if cond is None:
        raise ValueError("this backbone has adaln=True and needs a conditioning vector `cond`")
      sh1, sc1, g1, sh2, sc2, g2 = self.ada(cond)
    h = self.attn_norm(x)
    if self.ada is not None:
      h = modulate(h, sh1, sc1)
    h, cache = self.attn(h, mask=mask, rope=rope, cache=cache, cache_index=cache_index)
    h = self._drop(h, deterministic)
    x = x + (g1 * h if self.ada is not None else h).astype(x.dtype)
    h = self.mlp_norm(x)
    if self.ada is not None:
      h = modulate(h, sh2, sc2)
    h = self._drop(self.mlp(h, deterministic=deterministic), deterministic)
    x = x + (g2 * h if self.ada is not None else h).astype(x.dtype)
    return x, cache


class Transformer(nnx.Module):
  """Stack of blocks plus a final norm.

  __call__(x [B, L, D], positions, mask) -> (h [B, L, D], caches). `positions`: int [B, L] for
  'rope1d'/'learned' and [B, L, 2] (row, col) for 'rope2d'; -1 marks a token without a position.
  """

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
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

  def init_cache(self, batch: int, length: int, dtype=None) -> List[Cache]:
    dtype = dtype or self.cfg.compute_dtype
    return [init_cache(batch, length, self.cfg.kv_heads, self.cfg.head_dim, dtype)
            for _ in range(self.cfg.num_layers)]

  def __call__(self, x, *, positions, mask: MaskSpec, cond=None,
               caches: Optional[Sequence[Cache]] = None, cache_index=None,
               deterministic: bool = True):
    cfg = self.cfg
    if self.pos_embed is not None:
      flat = positions if positions.ndim == 2 else positions[..., 0]
      emb = self.pos_embed(jnp.maximum(flat, 0)) * (flat >= 0)[..., None]
      x = x + emb.astype(x.dtype)
    rope = self.rope_tables(positions)
    x = constrain(x.astype(cfg.compute_dtype), _HIDDEN)
    new_caches = [] if caches is not None else None
    for i, block in enumerate(self.blocks):
      x, c = block(x, mask=mask, rope=rope, cond=cond,
                   cache=None if caches is None else caches[i], cache_index=cache_index,
                   deterministic=deterministic)
      x = constrain(x, _HIDDEN)  # keep the batch split under FSDP (arjax.parallel.activations).
      if new_caches is not None:
        new_caches.append(c)
    return self.norm(x), new_caches
