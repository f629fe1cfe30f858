"""Basic layers with logical-axis annotations: Dense, Embed, RMSNorm, LayerNorm, SwiGLU, GELU MLP,
adaLN.

Every parameter carries `logical_axes` metadata (names such as 'embed', 'mlp', 'heads',
'vocab'); `arjax.parallel` maps those names to mesh axes with the config's rules, so model
code never names a mesh axis. Biases are off by default (Llama); ViT-style generators (RAR, LPD)
turn them on with `use_bias`. Legend: B batch, L length, D width, F MLP width.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

Axes = Tuple[Optional[str], ...]


def make_param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Axes,
               dtype=jnp.float32) -> nnx.Param:
  """A parameter with logical axis names (one per dimension)."""
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {axes} do not match parameter shape {tuple(shape)}")
  value = init(rngs.params(), tuple(shape), dtype)
  return nnx.Param(value, logical_axes=tuple(axes))


class Dense(nnx.Module):
  """y = x W (+ b with use_bias; Llama has none), W [in, out] with logical axes `axes`.

  `dtype` is the compute dtype of the operands; `preferred_element_type` the dtype the matmul
  accumulates and returns in (float32 for logits over a large vocabulary from bf16 operands).
  """

  def __init__(self, in_features: int, out_features: int, *, axes: Axes, rngs: nnx.Rngs,
               init=None, param_dtype=jnp.float32, dtype=None, use_bias: bool = False,
               preferred_element_type=None):
    init = init or nnx.initializers.normal(stddev=in_features ** -0.5)
    self.kernel = make_param(rngs, init, (in_features, out_features), axes, param_dtype)
    self.bias = (make_param(rngs, nnx.initializers.zeros, (out_features,), axes[-1:], param_dtype)
                 if use_bias else None)
    self.dtype = dtype
    self.preferred_element_type = preferred_element_type

  def __call__(self, x):
    w = self.kernel[...]
    if self.dtype is not None:
      x, w = x.astype(self.dtype), w.astype(self.dtype)
    y = jnp.dot(x, w, preferred_element_type=self.preferred_element_type)
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y


class DenseGeneral(nnx.Module):
  """Projection D -> (H, K) or (H, K) -> D for attention, kernel [D, H, K] or [H, K, D]."""

  def __init__(self, shape: Sequence[int], *, contract: int, axes: Axes, rngs: nnx.Rngs,
               param_dtype=jnp.float32, dtype=None, init=None, use_bias: bool = False):
    fan_in = 1
    for s in shape[:contract]:
      fan_in *= s
    init = init or nnx.initializers.normal(stddev=fan_in ** -0.5)
    self.kernel = make_param(rngs, init, tuple(shape), axes, param_dtype)
    self.bias = (make_param(rngs, nnx.initializers.zeros, tuple(shape[contract:]),
                            axes[contract:], param_dtype) if use_bias else None)
    self.contract = contract
    self.dtype = dtype

  def __call__(self, x):
    w = self.kernel[...]
    if self.dtype is not None:
      x, w = x.astype(self.dtype), w.astype(self.dtype)
    n = self.contract
    y = jax.lax.dot_general(x, w, (((tuple(range(x.ndim - n, x.ndim))), tuple(range(n))),
                                   ((), ())))
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y


class Embed(nnx.Module):
  """Token table [V, D] (axes 'vocab', 'embed'); `attend` gives tied logits."""

  def __init__(self, num_embeddings: int, features: int, *, rngs: nnx.Rngs,
               axes: Axes = ("vocab", "embed"), param_dtype=jnp.float32, dtype=None,
               stddev: float = 0.02):
    self.embedding = make_param(rngs, nnx.initializers.normal(stddev=stddev),
                                (num_embeddings, features), axes, param_dtype)
    self.num_embeddings = num_embeddings
    self.dtype = dtype

  def __call__(self, ids):
    out = jnp.take(self.embedding[...], ids, axis=0)
    return out if self.dtype is None else out.astype(self.dtype)


class RMSNorm(nnx.Module):
  """RMSNorm (Zhang & Sennrich 2019) over the last axis, computed in float32."""

  def __init__(self, features: int, *, rngs: nnx.Rngs, eps: float = 1e-5,
               axes: Axes = ("embed",), param_dtype=jnp.float32):
    self.scale = make_param(rngs, nnx.initializers.ones, (features,), axes, param_dtype)
    self.eps = eps

  def __call__(self, x):
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * self.scale[...].astype(jnp.float32)).astype(dtype)


class LayerNorm(nnx.Module):
  """LayerNorm (Ba et al. 2016) over the last axis with scale and bias, in float32 (ViT blocks
  of RAR and LPD)."""

  def __init__(self, features: int, *, rngs: nnx.Rngs, eps: float = 1e-6,
               axes: Axes = ("embed",), param_dtype=jnp.float32):
    self.scale = make_param(rngs, nnx.initializers.ones, (features,), axes, param_dtype)
    self.bias = make_param(rngs, nnx.initializers.zeros, (features,), axes, param_dtype)
    self.eps = eps

  def __call__(self, x):
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    x32 = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (x32 * self.scale[...].astype(jnp.float32)
            + self.bias[...].astype(jnp.float32)).astype(dtype)


NORMS = ("rmsnorm", "layernorm")


def make_norm(kind: str, features: int, *, rngs: nnx.Rngs, eps: float, axes: Axes = ("embed",),
              param_dtype=jnp.float32):
  """'rmsnorm' (Llama) or 'layernorm' (ViT) over the last axis."""
  if kind == "rmsnorm":
    return RMSNorm(features, rngs=rngs, eps=eps, axes=axes, param_dtype=param_dtype)
  if kind == "layernorm":
    return LayerNorm(features, rngs=rngs, eps=eps, axes=axes, param_dtype=param_dtype)
  raise ValueError(f"norm {kind!r}; expected one of {NORMS}")


def swiglu_hidden_dim(dim: int, multiple_of: int = 256, ffn_dim_multiplier: Optional[float] = None
                      ) -> int:
  """Llama's SwiGLU width: 2/3 of 4D, times an optional multiplier, rounded up to `multiple_of`."""
  hidden = int(2 * (4 * dim) / 3)
  if ffn_dim_multiplier is not None:
    hidden = int(ffn_dim_multiplier * hidden)
  return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _dropout(rate: float, rngs: nnx.Rngs, stream: bool) -> Optional[nnx.Dropout]:
  """Dropout drawing from the module's own RNG stream, or (stream=False) from a key given at
  call time: stacked (scanned) blocks hold no RNG state, their keys come in per layer."""
  if rate <= 0:
    return None
  return nnx.Dropout(rate, rngs=rngs) if stream else nnx.Dropout(rate)


class SwiGLU(nnx.Module):
  """w2(silu(w1 x) * w3 x) (Shazeer 2020), no biases. x [B, L, D] -> [B, L, D]."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=None,
               param_dtype=jnp.float32, dropout: float = 0.0, dropout_stream: bool = True):
    self.w1 = Dense(dim, hidden, axes=("embed", "mlp"), rngs=rngs, dtype=dtype,
                    param_dtype=param_dtype)
    self.w3 = Dense(dim, hidden, axes=("embed", "mlp"), rngs=rngs, dtype=dtype,
                    param_dtype=param_dtype)
    self.w2 = Dense(hidden, dim, axes=("mlp", "embed"), rngs=rngs, dtype=dtype,
                    param_dtype=param_dtype)
    self.dropout = _dropout(dropout, rngs, dropout_stream)

  def __call__(self, x, *, deterministic: bool = True, dropout_key=None):
    h = jax.nn.silu(self.w1(x)) * self.w3(x)
    if self.dropout is not None:
      h = self.dropout(h, deterministic=deterministic, rngs=dropout_key)
    return self.w2(h)


class GeluMLP(nnx.Module):
  """fc2(gelu(fc1 x)) (ViT / timm `Mlp`, exact erf GELU). x [B, L, D] -> [B, L, D]."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=None,
               param_dtype=jnp.float32, dropout: float = 0.0, use_bias: bool = True,
               dropout_stream: bool = True):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias)
    self.fc1 = Dense(dim, hidden, axes=("embed", "mlp"), **kw)
    self.fc2 = Dense(hidden, dim, axes=("mlp", "embed"), **kw)
    self.dropout = _dropout(dropout, rngs, dropout_stream)

  def __call__(self, x, *, deterministic: bool = True, dropout_key=None):
    h = jax.nn.gelu(self.fc1(x), approximate=False)
    if self.dropout is not None:
      h = self.dropout(h, deterministic=deterministic, rngs=dropout_key)
    return self.fc2(h)


class AdaLNModulation(nnx.Module):
  """Shift/scale/gate from a conditioning vector (DiT's adaLN-Zero; zero-initialised).

  c [B, D] or [B, L, D] -> n_chunks arrays of [B, 1 or L, D].
  """

  def __init__(self, cond_dim: int, dim: int, n_chunks: int, *, rngs: nnx.Rngs, dtype=None,
               param_dtype=jnp.float32, use_bias: bool = False):
    self.proj = Dense(cond_dim, n_chunks * dim, axes=("embed", "mlp"), rngs=rngs, dtype=dtype,
                      init=nnx.initializers.zeros, param_dtype=param_dtype, use_bias=use_bias)
    self.n_chunks = n_chunks

  def __call__(self, c):
    out = self.proj(jax.nn.silu(c))
    if out.ndim == 2:
      out = out[:, None, :]
    return jnp.split(out, self.n_chunks, axis=-1)


def modulate(x, shift, scale):
  return x * (1 + scale) + shift
