"""FAR: frequency autoregression over continuous tokens (Yu et al. 2025, "Frequency Autoregressive
Image Generation with Continuous Tokens"; yuhuUSTC/FAR models/far.py, models/diffloss.py).

MAR's encoder-decoder and continuous head (arjax.models.mar; any continuous head, FAR's is the
diffusion head) with the next token replaced by the next frequency band of the whole latent:

  level-k input   L_k(x) = bicubic(area(x, k x k), H x W) for k = 1 .. G-1 (PyTorch's
                  F.interpolate 'area' then 'bicubic', arjax.tokenizers.resample), L_0(x) = 0:
                  a spatial low-pass of the latent x [B, H, W, C]. As H = W = G is static, L_k is
                  one [G, G] matrix per axis (`level_matrices`, float64 -> float32), so a traced
                  k indexes a stack and training compiles once.
  condition       the MAR encoder-decoder over L_k(x) with NO token masked (FAR's default
                  `mask=False`: every input token is visible) -> z [B, N, Dd].
  level           a Linear embedding of the level k (a float, as the official code feeds it).
                  Heads on MAR's denoising MLP (diffusion, flow, shortcut: arjax.heads.adaln_mlp)
                  get it where the official DiffLoss does: Linear(1, W)(k) added to the MLP's
                  condition, y = t_emb + Linear(z) + Linear(k) (`index_cond_embed`; parity with
                  the official code: tests/convert/test_far.py). Other continuous heads (gmm,
                  ...) have no such condition: there it is added to z, z + Linear(1, Dd)(k).
  target          always the full latent x: the head's loss on every token.

Training (`loss`): one level k ~ U{0, ..., G-1} per batch (the official draws one per batch, as
here), the class dropped to the null class with probability `class_dropout`; with
`model.level_loss_weight` every token's loss is weighted by w_k = 1 + sin(pi/2 (k + 1) / G)
(the official `--loss_weight`, off by default).

Sampling ('next_frequency', arjax.sampling.next_frequency): S = len(model.sample_levels) steps;
step s feeds L_{k_s}(previous draw) (zeros at s = 0, k_0 = 0) at level k_s and draws the whole
latent; the last step's draw is the sample. CFG ramps linearly, 1 + (w - 1) s / S, and the
temperature follows tau_0 + (tau - tau_0)(1 - cos(pi/2 (s + 1) / S)) from
`model.temperature_start` tau_0 (0.8) to eval.temperature tau (1.0), FAR's sample_tokens_nomask.

Legend: B batch, N = H W tokens, G grid side (H = W), C channels, Dd decoder width, S steps.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax.heads.adaln_mlp import AdaLNMLP
from arjax.heads.base import token_metrics
from arjax.models.mar import MAR, MARFields
from arjax.models.registry import MODELS, model_fields
from arjax.nn.layers import Dense
from arjax.tokenizers.resample import area_matrix, bicubic_matrix


@dataclasses.dataclass(frozen=True)
class FARFields(MARFields):
  """`config.model` of 'far': MAR's fields (the mask ratio ones unused: FAR masks nothing) plus
  the frequency levels."""
  sample_levels: Tuple[int, ...] = (0, 2, 3, 4, 5, 6, 7, 8, 9, 10)  # k_s per sampling step.
  temperature_start: float = 0.8   # tau_0 of the temperature schedule (FAR: 0.8).
  level_loss_weight: bool = False  # weight the loss by w_k = 1 + sin(pi/2 (k + 1) / G).

  def __post_init__(self):
    super().__post_init__()
    lv = self.sample_levels
    if (not isinstance(lv, (tuple, list)) or not lv
        or any(isinstance(k, bool) or not isinstance(k, int) for k in lv)):
      raise ValueError(f"model.sample_levels={lv!r}; expected a non-empty list of integer "
                       "levels (FAR: [0, 2, 3, ..., 10])")
    if lv[0] != 0 or any(b <= a for a, b in zip(lv, lv[1:])):
      raise ValueError(f"model.sample_levels={list(lv)}; expected strictly increasing levels "
                       "starting at 0 (FAR: [0, 2, 3, ..., 10])")
    t0 = self.temperature_start
    if isinstance(t0, bool) or not isinstance(t0, (int, float)) or not (
        math.isfinite(t0) and t0 > 0):
      raise ValueError(f"model.temperature_start={t0!r}; expected a finite number > 0 (FAR: 0.8)")
    if not isinstance(self.level_loss_weight, bool):
      raise ValueError(f"model.level_loss_weight={self.level_loss_weight!r}; expected a bool")


def level_matrices(grid: int) -> np.ndarray:
  """float64 [G, G, G]: row k is bicubic(k -> G) @ area(G -> k) (PyTorch's resampling along one
  axis), row 0 zeros: L_k(x) = M_k x M_k^T per channel."""
  out = np.zeros((grid, grid, grid), np.float64)
  for k in range(1, grid):
    out[k] = bicubic_matrix(k, grid) @ area_matrix(grid, k)
  return out


def level_weights(grid: int) -> np.ndarray:
  """float64 [G]: FAR's optional loss weight w_k = 1 + sin(pi/2 (k + 1) / G)."""
  return 1.0 + np.sin(np.pi / 2.0 * (np.arange(grid) + 1) / grid)


class FAR(MAR):

  FIELDS = FARFields

  def __init__(self, config, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    m = model_fields(FARFields, config)
    h, w = self.tokenizer.grid
    if h != w:
      raise ValueError(f"model 'far' needs a square token grid, got {h}x{w}")
    g = self.grid = h
    if m.sample_levels[-1] >= g:
      raise ValueError(f"model.sample_levels={list(m.sample_levels)}: level "
                       f"{m.sample_levels[-1]} exceeds the {g}x{g} token grid; expected levels "
                       f"< {g}")
    self.sample_levels = tuple(m.sample_levels)
    self.temperature_start = float(m.temperature_start)
    self.level_loss_weight = m.level_loss_weight
    # Linear(1, W) of the level k into the denoising MLP's condition (FAR's index_cond_embed,
    # Xavier-uniform, zero bias); Linear(1, Dd) onto z for other heads (module docstring).
    net = getattr(self.head, "net", None)
    self.level_in_head = isinstance(net, AdaLNMLP)
    width, axes = (net.width, (None, None)) if self.level_in_head else (self.dec_cfg.dim,
                                                                        (None, "embed"))
    self.level_embed = Dense(1, width, axes=axes, rngs=rngs, use_bias=True,
                             init=nnx.initializers.xavier_uniform())

  def level_input(self, tokens, level):
    """tokens [B, N, C] (raster order), level int (static or traced, 0 <= k < G) -> L_k(tokens)
    [B, N, C]."""
    b, n, c = tokens.shape
    m = jnp.asarray(level_matrices(self.grid), jnp.float32)[level]
    x = tokens.astype(jnp.float32).reshape(b, self.grid, self.grid, c)
    y = jnp.einsum("ih,bhwc,jw->bijc", m, x, m, precision=jax.lax.Precision.HIGHEST)
    return y.reshape(b, n, c)

  def level_head(self, z, level):
    """z [B, N, Dd], level (a scalar or [B, N], int or float) -> the head's Distribution over
    [B, N] at that level (the level embedding placed as the module docstring says)."""
    k = jnp.asarray(level, jnp.float32)[..., None]
    emb = self.level_embed(k).astype(jnp.float32)      # [W] or [B, N, W] (Dd for z heads)
    if self.level_in_head:
      dist = self.head(z)
      return dist.replace(c=dist.c + emb)
    return self.head(z + emb)

  def level_dist(self, inputs, labels, level, *, train: bool = False):
    """inputs [B, N, C] (already L_k of something), labels [B], level scalar -> the head's
    Distribution over [B, N] at level k."""
    b, n = inputs.shape[:2]
    z = self.condition(inputs, labels, jnp.zeros((b, n), bool), train=train)
    return self.level_head(z, level)

  def loss(self, batch: Dict[str, jax.Array], *, train: bool
           ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    tokens = self.checked_tokens(batch)
    b = tokens.shape[0]
    labels = self.drop_labels(batch["label"].astype(jnp.int32), train)
    k_level, k_head = jax.random.split(self.rngs.sample() if train else jax.random.key(0))
    level = jax.random.randint(k_level, (), 0, self.grid)
    tokens = tokens.astype(jnp.float32)
    dist = self.level_dist(self.level_input(tokens, level), labels, level, train=train)
    w = jnp.ones((b, self.num_tokens), jnp.float32)
    if "mask" in batch:  # padded evaluation batches
      w = w * batch["mask"][:, None].astype(jnp.float32)
    loss, per_token = dist.loss(tokens, key=k_head, weights=w)
    metrics = token_metrics(dist, loss, per_token, tokens, w)
    if self.level_loss_weight:  # the official mean(loss * w_k): the batch's one level scales it.
      loss = loss * jnp.asarray(level_weights(self.grid), jnp.float32)[level]
      metrics["loss"] = loss
    metrics["level"] = level.astype(jnp.float32)
    return loss, metrics

  def grid_dist(self, tokens, labels, known, plan):
    raise ValueError("model 'far' samples by frequency levels: use sampler 'next_frequency'")

  def default_sampler(self) -> str:
    return "next_frequency"


@MODELS.register("far", fields=FARFields)
def _build(config, *, rngs):
  return FAR(config, rngs=rngs)
