"""Reconstruction metrics for tokenizers: PSNR and SSIM, float64 numpy.

SSIM follows Wang et al. 2004 ("Image Quality Assessment: From Error Visibility to Structural
Similarity") with the settings the tokenizer papers (VQGAN, LlamaGen, Open-MAGVIT2) report
through skimage: a Gaussian window of 11 taps with sigma 1.5, K1 = 0.01, K2 = 0.03, population
(not sample) covariances, the mean taken over the pixels whose window lies inside the image,
channels averaged. That is skimage.metrics.structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=...) and Wang et al.'s MATLAB ssim.m.

Images are uint8 in 0..255 (data range 255) or floats in [0, 1] (data range 1). Both
arguments must have the same dtype family, so that a [0, 1] reconstruction is never compared
with a 0..255 original.

Shape legend: B batch, H/W height/width, C channels.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import scipy.ndimage

_WIN = 11
_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03


def _prepare(a, b, name: str) -> Tuple[np.ndarray, np.ndarray, float]:
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape:
    raise ValueError(f"{name}: shapes differ: {a.shape} vs {b.shape}")
  if a.ndim == 3:   # a single image [H, W, C]
    a, b = a[None], b[None]
  if a.ndim != 4:
    raise ValueError(f"{name}: expected [B, H, W, C] or [H, W, C], got shape {a.shape}")
  if (a.dtype == np.uint8) != (b.dtype == np.uint8):
    other = b.dtype if a.dtype == np.uint8 else a.dtype
    raise ValueError(f"{name}: one input is uint8 and the other {other}; pass both as uint8 "
                     "(0..255) or both as floats in [0, 1]")
  data_range = 255.0 if a.dtype == np.uint8 else 1.0
  return a.astype(np.float64), b.astype(np.float64), data_range


def psnr(images, reconstructions) -> np.ndarray:
  """[B] peak signal-to-noise ratio in dB, per image (MSE over H, W, C); inf where equal.

  Papers average the per-image values; `psnr(...).mean()` does that.
  """
  a, b, data_range = _prepare(images, reconstructions, "psnr")
  mse = ((a - b) ** 2).mean(axis=(1, 2, 3))
  with np.errstate(divide="ignore"):
    return 10.0 * np.log10(data_range ** 2 / mse)


def gaussian_window() -> np.ndarray:
  """The normalised 1-D window: 11 taps, sigma 1.5 (scipy's truncate=3.5 gives radius 5)."""
  x = np.arange(_WIN, dtype=np.float64) - _WIN // 2
  w = np.exp(-0.5 * (x / _SIGMA) ** 2)
  return w / w.sum()


def ssim(images, reconstructions) -> np.ndarray:
  """[B] mean structural similarity per image (Wang et al. 2004), channels averaged.

  Needs H, W >= 11; use the window-sized valid region as Wang et al. do.
  """
  a, b, data_range = _prepare(images, reconstructions, "ssim")
  if min(a.shape[1:3]) < _WIN:
    raise ValueError(f"ssim: images must be at least {_WIN}x{_WIN} for the {_WIN}-tap window, "
                     f"got {a.shape[1]}x{a.shape[2]}")
  w = gaussian_window()

  def blur(x):
    # Separable 'valid' filtering over H and W: full-window pixels only, as in Wang et al.
    x = scipy.ndimage.correlate1d(x, w, axis=1, mode="constant")
    x = scipy.ndimage.correlate1d(x, w, axis=2, mode="constant")
    r = _WIN // 2
    return x[:, r:x.shape[1] - r, r:x.shape[2] - r]

  mu_a, mu_b = blur(a), blur(b)
  var_a = blur(a * a) - mu_a ** 2
  var_b = blur(b * b) - mu_b ** 2
  cov = blur(a * b) - mu_a * mu_b
  c1 = (_K1 * data_range) ** 2
  c2 = (_K2 * data_range) ** 2
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
       / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
  return s.mean(axis=(1, 2, 3))
