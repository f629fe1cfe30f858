"""What every quantizer returns, the config plumbing, and shared metrics.

A quantizer maps encoder latents z [B, h, w, Cin] to what the decoder reads,
z_q [B, h, w, Cout], plus tokens, its own (already weighted) loss and scalar metrics. It also
encodes latents to tokens and decodes tokens back to z_q without a loss:

    out = quantizer(z, train=True)      # QuantizerOutput
    tokens = quantizer.encode(z)        # int32 [B, N]  (continuous quantizers: float [B, N, D])
    z_q = quantizer.decode(tokens, (h, w))

Attributes every quantizer has: `in_channels`, `out_channels`, `vocab_size` (0 when
continuous), `num_tokens(grid)` and `token_positions(grid)` (numpy int32 [N, 2]).

Legend: B batch, h/w latent grid, N tokens, D code dim, K codebook size.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


class QuantizerOutput(NamedTuple):
  z_q: jax.Array                 # [B, h, w, Cout] straight-through (or sampled) latents.
  tokens: jax.Array              # int32 [B, N] (continuous: float [B, N, D]).
  loss: jax.Array                # scalar, weighted quantizer loss (commitment, codebook, KL...).
  metrics: Dict[str, jax.Array]  # scalars: codebook_usage, perplexity, ...


def config_from_fields(name: str, fields: Dict[str, Tuple[Any, str]], **overrides
                       ) -> ml_collections.ConfigDict:
  """ConfigDict {name, field: default} for one quantizer; unknown overrides fail by name."""
  c = ml_collections.ConfigDict()
  c.name = name
  for key, (default, _) in fields.items():
    c[key] = list(default) if isinstance(default, tuple) else default
  for key, value in overrides.items():
    if key not in fields:
      raise KeyError(f"quantizer {name!r} has no field {key!r}; expected one of {sorted(fields)}")
    c[key] = value
  return c


def fields_dataclass(name: str, fields: Dict[str, Tuple[Any, str]]):
  """The `FIELDS` table of quantizer `name` as the frozen dataclass its registry entry declares
  (what `arjax.registry.complete_node` completes `config.model.quantizer` with)."""
  return dataclasses.make_dataclass(
      f"{name.capitalize()}QuantizerFields",
      [(key, type(default), dataclasses.field(default=default))
       for key, (default, _) in fields.items()], frozen=True)


def read_fields(cfg: ml_collections.ConfigDict, name: str, fields: Dict[str, Tuple[Any, str]]
                ) -> Dict[str, Any]:
  """Validates `config.model.quantizer` for quantizer `name`; returns its field values."""
  extra = sorted(set(cfg.keys()) - set(fields) - {"name"})
  if extra:
    raise ValueError(f"config.model.quantizer (name={name!r}) has unknown field(s) {extra}; "
                     f"{name!r} takes {sorted(fields)}")
  out = {}
  for key, (default, _) in fields.items():
    value = cfg[key] if key in cfg else default
    out[key] = tuple(value) if isinstance(default, tuple) else value
  return out


def usage_metrics(indices: jax.Array, vocab_size: int) -> Dict[str, jax.Array]:
  """Fraction of the codebook hit in this batch, and the perplexity exp(H) of code frequencies.

  Perplexity equals the number of codes used when they are used equally often; it is the
  figure VQ-VAE-2 and LlamaGen report alongside usage.
  """
  counts = jnp.bincount(indices.reshape(-1), length=vocab_size).astype(jnp.float32)
  p = counts / jnp.maximum(counts.sum(), 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return {"codebook_usage": jnp.mean(counts > 0), "perplexity": jnp.exp(entropy)}


def entropy_terms(logits: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """(mean per-sample entropy, entropy of the mean distribution) of softmax(logits [M, K]).

  The entropy penalty of MAGVIT-v2 (Yu et al. 2024) and LlamaGen's optional VQ entropy loss
  is per-sample entropy minus codebook entropy: confident assignments, diverse codes.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  p = jnp.exp(logp)
  sample = -jnp.mean(jnp.sum(p * logp, axis=-1))
  avg = jnp.mean(p, axis=0)
  codebook = -jnp.sum(avg * jnp.log(avg + 1e-12))
  return sample, codebook


def raster_positions(h: int, w: int) -> np.ndarray:
  """numpy int32 [h*w, 2]: (row, col) in raster order."""
  return np.stack([np.repeat(np.arange(h), w), np.tile(np.arange(w), h)], -1).astype(np.int32)


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
  """x / max(||x||, eps), as torch.nn.functional.normalize."""
  n = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(n, eps)


def nearest_code(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """int32 [...] index of the codebook row [K, D] nearest (Euclidean) to each z [..., D].

  ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 does not change the argmin, so it is
  dropped. HIGHEST precision keeps TPUs from taking the dot product in bfloat16, which would
  change assignments.
  """
  flat = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
  e = codebook.astype(jnp.float32)
  dots = jnp.dot(flat, e.T, precision=jax.lax.Precision.HIGHEST)
  d = jnp.sum(e * e, axis=-1)[None, :] - 2.0 * dots
  return jnp.argmin(d, axis=-1).astype(jnp.int32).reshape(z.shape[:-1])
