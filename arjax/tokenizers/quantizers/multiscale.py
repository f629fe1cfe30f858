"""Multi-scale residual vector quantization (VAR; Tian et al. 2024, "Visual Autoregressive
Modeling: Scalable Image Generation via Next-Scale Prediction").

A latent map f [B, H, W, D] (H = W = scales[-1]) becomes K token maps of sides
scales = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), N = sum of squares = 680 tokens, from one shared
codebook:

    f_hat = 0, r = f
    for k, s in enumerate(scales):
      q_k = NN(area(r, s))                    # no resize at the last scale
      h = phi_k(bicubic(e[q_k], H))           # no resize at the last scale
      f_hat += h;  r -= h

`area` is PyTorch's adaptive average pooling and `bicubic` PyTorch's bicubic (a = -0.75,
align_corners=False, edge clamped), both from `arjax.tokenizers.resample`: `jax.image.resize`
matches neither, and VAR's tokens depend on them. phi(h) = (1 - r) h + r conv3x3(h) with
r = 0.5; `num_phi` = 4 convs are shared across the K scales: scale k (from 0) uses the conv
whose tick in linspace(1/(3n), 1 - 1/(3n), n) (n = num_phi; 1/12 ... 11/12 for n = 4) is
nearest k / (K - 1).

Loss, averaged over scales: beta * ||sg(f_hat_k) - f||^2 + ||f_hat_k - sg(f)||^2 where f_hat_k
is the running sum after scale k. The decoder reads f + sg(f_hat - f) (straight-through).
Lookup is Euclidean, or cosine with `l2_norm` (VAR's using_znorm; the selected code is still
the raw codebook row).

Non-residual (`residual=False`, FlexVAR, Jiao et al. 2025): every scale is quantized on its own
from the area-downsampled latent, q_k = NN(area(f, s_k)), with no running sum; the last scale
alone reconstructs (f_hat = phi_K(e[q_K])), and the next-scale input of scale k + 1 is
bicubic(e[q_k], s_{k+1}) (`independent_tokens`, `independent_inputs`; any scale list, so a
generator can draw its own). The loss is the plain VQ loss of each scale's map against area(f).

Hybrid (`hybrid=True`, HART, Tang et al. 2024; mit-han-lab/hart HARTHybridQuantizer): after the
last discrete scale the leftover residual r = f - f_hat_discrete is the continuous residual token
map (`hybrid_split`). In training the decoder reads f_hat_discrete + r (= f) with probability
1 - skip_continuous_prob and f_hat_discrete alone otherwise (one draw per batch, as HART's
random.random()), both straight-through, so the decoder learns both paths; in evaluation it reads
f_hat_discrete + r. The VQ loss is VAR's.

Legend: B batch, H/W final latent grid, D code dim, K scales, V codebook size, N = sum s_k^2.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax.tokenizers.conv import Conv, Linear
from arjax.tokenizers.quantizers.base import (QuantizerOutput, l2_normalize, nearest_code,
                                              usage_metrics)
from arjax.tokenizers.resample import area_resize, bicubic_resize

FIELDS = {
    "codebook_size": (4096, "V, codes shared by all scales"),
    "code_dim": (32, "D, code width (projected from/to the encoder channels if different)"),
    "scales": ((1, 2, 3, 4, 5, 6, 8, 10, 13, 16), "token-map sides, small to large"),
    "beta": (0.25, "commitment weight"),
    "phi_ratio": (0.5, "phi(h) = (1 - r) h + r conv3x3(h); 0 disables phi"),
    "num_phi": (4, "phi convs shared across scales by nearest tick (VAR share_quant_resi)"),
    "l2_norm": (False, "cosine lookup (VAR using_znorm)"),
    "residual": (True, "False: each scale quantizes area(f, s) on its own (FlexVAR)"),
    "hybrid": (False, "HART: the decoder also reads the continuous residual f - f_hat"),
    "skip_continuous_prob": (0.5, "hybrid: training probability of decoding f_hat alone"),
}


def phi_index(scale_index: int, num_scales: int, num_phi: int) -> int:
  """Which of `num_phi` partially shared convs scale `scale_index` (from 0) uses."""
  ticks = np.linspace(1.0 / 3.0 / num_phi, 1.0 - 1.0 / 3.0 / num_phi, num_phi)
  at = scale_index / (num_scales - 1) if num_scales > 1 else 0.0
  return int(np.argmin(np.abs(ticks - at)))


def hybrid_decoder_input(f, f_hat_discrete, keep):
  """What HART's decoder reads: f_hat_discrete + keep (f - f_hat_discrete); f, f_hat [B, H, W, D],
  keep bool scalar (or broadcastable). keep = False: the discrete path alone."""
  return f_hat_discrete + jnp.asarray(keep, f.dtype) * (f - f_hat_discrete)


class MultiScaleVQ(nnx.Module):
  """f [B, H, W, C] -> f_hat [B, H, W, C], tokens int32 [B, N] (scales concatenated)."""

  FIELDS = FIELDS

  def __init__(self, in_channels: int, *, rngs: nnx.Rngs, codebook_size: int = 4096,
               code_dim: int = 32, scales: Sequence[int] = FIELDS["scales"][0],
               beta: float = 0.25, phi_ratio: float = 0.5, num_phi: int = 4,
               l2_norm: bool = False, residual: bool = True, hybrid: bool = False,
               skip_continuous_prob: float = 0.5):
    scales = tuple(int(s) for s in scales)
    self.residual = bool(residual)
    p = skip_continuous_prob
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
      raise ValueError(f"quantizer.skip_continuous_prob={p!r}; expected a number in [0, 1] "
                       "(HART: 0.5)")
    if hybrid and not residual:
      raise ValueError("quantizer.hybrid=True needs quantizer.residual=True: the continuous "
                       "residual is what the residual scales leave of f")
    self.hybrid, self.skip_continuous_prob = bool(hybrid), float(p)
    # The hybrid decoder's path draw (HART's random.random() per batch) comes from this stream.
    self.rngs = rngs if hybrid else None
    if not scales or any(b <= a for a, b in zip(scales, scales[1:])) or scales[0] < 1:
      raise ValueError(f"quantizer.scales={list(scales)} must be positive and increasing")
    self.scales = scales
    self.vocab_size = self.codebook_size = codebook_size
    self.code_dim = code_dim
    self.in_channels = self.out_channels = in_channels
    self.beta = beta
    self.phi_ratio = phi_ratio
    self.l2_norm = l2_norm
    # VAR initialises its codebook uniformly in +-1/V (eini = -1).
    self.codebook = nnx.Param(
        jax.random.uniform(rngs.params(), (codebook_size, code_dim), jnp.float32,
                           -1.0 / codebook_size, 1.0 / codebook_size),
        logical_axes=("vocab", None))
    use_phi = phi_ratio != 0 and num_phi > 0
    self.phis = nnx.List([Conv(code_dim, code_dim, 3, rngs=rngs)
                          for _ in range(num_phi if use_phi else 0)])
    self.phi_of_scale = tuple(phi_index(k, len(scales), num_phi) if use_phi else -1
                              for k in range(len(scales)))
    if in_channels != code_dim:
      self.proj_in = Linear(in_channels, code_dim, rngs=rngs, axes=("mlp", None))
      self.proj_out = Linear(code_dim, in_channels, rngs=rngs, axes=(None, "mlp"))
    else:
      self.proj_in = self.proj_out = None

  @property
  def grid(self) -> Tuple[int, int]:
    return (self.scales[-1], self.scales[-1])

  def _check(self, f):
    if f.shape[1:3] != self.grid:
      raise ValueError(f"multi-scale VQ expects a {self.grid[0]}x{self.grid[1]} latent map "
                       f"(the last of quantizer.scales={list(self.scales)}), got "
                       f"{f.shape[1]}x{f.shape[2]}; the image size must be "
                       f"{self.grid[0]} x the downsampling factor")

  def phi(self, k: int, h):
    i = self.phi_of_scale[k]
    if i < 0:
      return h
    return (1.0 - self.phi_ratio) * h + self.phi_ratio * self.phis[i](h)

  def _lookup(self, r):
    e = self.codebook[...]
    if self.l2_norm:
      return nearest_code(l2_normalize(r), l2_normalize(e))
    return nearest_code(r, e)

  def _upsample(self, k: int, emb):
    """Code map of scale k [B, s, s, D] -> its phi-filtered contribution [B, H, W, D]."""
    if k != len(self.scales) - 1:
      emb = bicubic_resize(emb, self.grid)
    return self.phi(k, emb)

  def code_vectors(self, idx):
    """int32 [...] -> the code vectors the lookup matched [..., D] (unit rows under l2_norm)."""
    e = self.codebook[...]
    return jnp.take(l2_normalize(e) if self.l2_norm else e, idx, axis=0)

  def independent_tokens(self, f, scales: Sequence[int]) -> List[jax.Array]:
    """Non-residual targets: f [B, H, W, D] -> per scale int32 [B, s, s], each NN(area(f, s))."""
    f = jax.lax.stop_gradient(f)
    return [self._lookup(area_resize(f, s) if s != f.shape[1] else f) for s in scales]

  def independent_inputs(self, maps: Sequence[jax.Array], scales: Sequence[int]) -> jax.Array:
    """Non-residual next-scale inputs: per scale int32 [B, s_k, s_k] -> [B, N - s_1^2, D],
    bicubic(e[q_k], s_{k+1}) for k = 1 .. K-1 (FlexVAR)."""
    b = maps[0].shape[0]
    outs = [bicubic_resize(self.code_vectors(q), s).reshape(b, s * s, self.code_dim)
            for q, s in zip(maps[:-1], scales[1:])]
    return jnp.concatenate(outs, axis=1)

  def _residual_pass(self, f):
    """Runs the residual loop on sg(f). Returns (indices per scale, f_hat after each scale)."""
    if not self.residual:
      indices = self.independent_tokens(f, self.scales)
      partial = [self.phi(k, bicubic_resize(self.code_vectors(q), self.grid)
                          if k != len(self.scales) - 1 else self.code_vectors(q))
                 for k, q in enumerate(indices)]
      return indices, partial
    f = jax.lax.stop_gradient(f)
    e = self.codebook[...]
    rest, f_hat = f, jnp.zeros_like(f)
    indices, partial = [], []
    last = len(self.scales) - 1
    for k, s in enumerate(self.scales):
      r = area_resize(rest, s) if k != last else rest
      idx = self._lookup(jax.lax.stop_gradient(r))
      h = self._upsample(k, jnp.take(e, idx, axis=0))
      f_hat = f_hat + h
      # The residual only selects later codes (through argmin), so it carries no gradient.
      rest = rest - jax.lax.stop_gradient(h)
      indices.append(idx)
      partial.append(f_hat)
    return indices, partial

  def __call__(self, z, *, train: bool = False) -> QuantizerOutput:
    f = z.astype(jnp.float32) if self.proj_in is None else self.proj_in(z.astype(jnp.float32))
    self._check(f)
    indices, partial = self._residual_pass(f)
    f_sg = jax.lax.stop_gradient(f)
    if self.residual:  # every running reconstruction against f
      targets = [f] * len(partial)
    else:  # each scale's own map against area(f, s): VQ loss per scale.
      partial = [self.phi(k, self.code_vectors(q)) if k == len(self.scales) - 1 else
                 area_resize(p, self.scales[k]) for k, (q, p) in enumerate(zip(indices, partial))]
      targets = [area_resize(f, s) if s != self.grid[0] else f for s in self.scales]
    loss = 0.0
    for f_hat, t in zip(partial, targets):
      loss = loss + self.beta * jnp.mean(jnp.square(jax.lax.stop_gradient(f_hat) - t))
      loss = loss + jnp.mean(jnp.square(f_hat - jax.lax.stop_gradient(t)))
    loss = loss / len(self.scales)
    f_hat = partial[-1]
    if self.hybrid:
      metrics_keep = self.continuous_keep(train)
      f_hat = hybrid_decoder_input(f_sg, f_hat, metrics_keep)
    st = f + jax.lax.stop_gradient(f_hat - f)
    b = z.shape[0]
    tokens = jnp.concatenate([i.reshape(b, -1) for i in indices], axis=1)
    metrics = {"quant_error": jnp.mean(jnp.square(f_hat - f_sg))}
    metrics.update(usage_metrics(tokens, self.vocab_size))
    if self.hybrid:
      metrics["continuous_kept"] = metrics_keep.astype(jnp.float32)
    out = st if self.proj_out is None else self.proj_out(st)
    return QuantizerOutput(out, tokens, loss, metrics)

  # -- hybrid (HART) ----------------------------------------------------------------------------
  def continuous_keep(self, train: bool, key=None):
    """bool scalar: whether the decoder reads the continuous residual in this batch. Training:
    u >= skip_continuous_prob, u ~ U[0, 1) from `key` (else the module's dropout stream);
    evaluation: always."""
    if not train:
      return jnp.ones((), bool)
    if key is None:
      key = self.rngs.dropout()
    return jax.random.uniform(key, ()) >= self.skip_continuous_prob

  def hybrid_split(self, z):
    """z [B, H, W, C] (what the quantizer reads) -> (tokens int32 [B, N], f_hat_discrete
    [B, H, W, D], residual [B, H, W, D] = f - f_hat_discrete), all without gradient."""
    f = z.astype(jnp.float32) if self.proj_in is None else self.proj_in(z.astype(jnp.float32))
    self._check(f)
    f = jax.lax.stop_gradient(f)
    indices, partial = self._residual_pass(f)
    tokens = jnp.concatenate([i.reshape(z.shape[0], -1) for i in indices], axis=1)
    return tokens, partial[-1], f - partial[-1]

  def decode_hybrid(self, tokens, residual) -> jax.Array:
    """tokens int32 [B, N], residual [B, H, W, D] -> f_hat_discrete + residual [B, H, W, C]."""
    want = self.grid + (self.code_dim,)
    if residual.ndim != 4 or tuple(residual.shape[1:]) != want:
      raise ValueError(f"multi-scale VQ decode_hybrid: residual must be [B, {want[0]}, {want[1]}, "
                       f"{want[2]}] (the final grid x quantizer.code_dim), got "
                       f"{list(residual.shape)}")
    f_hat = self.partial_reconstructions(tokens)[-1] + residual.astype(jnp.float32)
    return f_hat if self.proj_out is None else self.proj_out(f_hat)

  # -- tokens -----------------------------------------------------------------------------------
  def encode(self, z) -> jax.Array:
    """z [B, H, W, C] -> int32 [B, N], scale 1 first."""
    f = z.astype(jnp.float32) if self.proj_in is None else self.proj_in(z.astype(jnp.float32))
    self._check(f)
    indices, _ = self._residual_pass(f)
    return jnp.concatenate([i.reshape(z.shape[0], -1) for i in indices], axis=1)

  def split(self, tokens) -> List[jax.Array]:
    """int32 [B, N] -> per scale int32 [B, s, s]."""
    out, start = [], 0
    for s in self.scales:
      out.append(tokens[:, start:start + s * s].reshape(tokens.shape[0], s, s))
      start += s * s
    return out

  def partial_reconstructions(self, tokens) -> List[jax.Array]:
    """f_hat [B, H, W, D] after each scale (scale 1 only, scales 1-2, ... all)."""
    e = self.codebook[...]
    f_hat, out = 0.0, []
    if not self.residual:  # each scale alone (upsampled); the last one is the reconstruction.
      return [self._upsample(k, self.code_vectors(idx)) for k, idx in enumerate(self.split(tokens))]
    for k, idx in enumerate(self.split(tokens)):
      f_hat = f_hat + self._upsample(k, jnp.take(e, idx, axis=0))
      out.append(f_hat)
    return out

  def next_scale_inputs(self, tokens) -> jax.Array:
    """VAR's teacher-forcing input: [B, N - 1, D], the area-downsampled running f_hat of
    scales 1..k at scale k+1, for k = 1 .. K-1 (scale 1's input is the class token).
    Non-residual: bicubic(e[q_k], s_{k+1}) instead (`independent_inputs`)."""
    if not self.residual:
      return self.independent_inputs(self.split(tokens), self.scales)
    outs = []
    partial = self.partial_reconstructions(tokens)
    for k in range(len(self.scales) - 1):
      s = self.scales[k + 1]
      outs.append(area_resize(partial[k], s).reshape(tokens.shape[0], s * s, self.code_dim))
    return jnp.concatenate(outs, axis=1)

  def decode(self, tokens, grid: Tuple[int, int] = None) -> jax.Array:
    """int32 [B, N] -> f_hat [B, H, W, C]."""
    f_hat = self.partial_reconstructions(tokens)[-1]
    return f_hat if self.proj_out is None else self.proj_out(f_hat)

  def num_tokens(self, grid: Tuple[int, int] = None) -> int:
    return sum(s * s for s in self.scales)

  def token_positions(self, grid: Tuple[int, int] = None) -> np.ndarray:
    """(row, col) of every token on its own scale's grid, scales concatenated."""
    return np.concatenate([np.stack([np.repeat(np.arange(s), s), np.tile(np.arange(s), s)], -1)
                           for s in self.scales]).astype(np.int32)
