"""Reconstruction metrics for tokenizers, float64 numpy: PSNR and SSIM, and VTBench-style
detail measures (edge F1, high-band PSNR and energy ratio, PSNR/SSIM on the most detailed
images; see `detail_metrics`).

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


# -- detail preservation (VTBench-style) ------------------------------------------------------
# VTBench (Lin et al. 2025) separates a tokenizer's overall reconstruction from how it keeps
# fine detail (pattern and texture images) and symbols (text, read back by OCR). These are the
# measures of the first kind that need no external network; symbol preservation needs a
# recogniser and lives with the evaluator (arjax.train.evaluation: the offline classifier reads
# the reconstructed digits).

EDGE_THRESHOLD = 0.25   # edge pixels: gradient magnitude above a quarter of the data range.
HIGH_PASS_SIGMA = 1.0   # high band: the image minus its Gaussian blur of this sigma (pixels).
DETAIL_FRACTION = 0.25  # the detail subset: this fraction of images with the most edges.


def gradient_magnitude(images) -> np.ndarray:
  """[B, H, W, C] float64 Sobel gradient magnitude in units of the data range.

  The Sobel kernels are divided by 4, so a step of the full data range between two columns
  gives 1 on the pixels either side of it. Borders replicate the edge pixel (no false edges).
  """
  a, _, data_range = _prepare(images, images, "gradient_magnitude")
  a = a / data_range
  smooth, diff = np.array([1.0, 2.0, 1.0]) / 4.0, np.array([-1.0, 0.0, 1.0])
  gx = scipy.ndimage.correlate1d(scipy.ndimage.correlate1d(a, smooth, axis=1, mode="nearest"),
                                 diff, axis=2, mode="nearest")
  gy = scipy.ndimage.correlate1d(scipy.ndimage.correlate1d(a, smooth, axis=2, mode="nearest"),
                                 diff, axis=1, mode="nearest")
  return np.sqrt(gx * gx + gy * gy)


def edge_f1(images, reconstructions, threshold: float = EDGE_THRESHOLD) -> np.ndarray:
  """[B] F1 between the edge maps (gradient magnitude > threshold) of each original and its
  reconstruction, pixel for pixel (no distance tolerance): 2 TP / (2 TP + FP + FN). An image
  with no edges in either map scores 1."""
  _prepare(images, reconstructions, "edge_f1")
  e_a = gradient_magnitude(images) > threshold
  e_b = gradient_magnitude(reconstructions) > threshold
  tp = (e_a & e_b).sum(axis=(1, 2, 3))
  wrong = (e_a ^ e_b).sum(axis=(1, 2, 3))
  return np.where(tp + wrong == 0, 1.0, 2.0 * tp / np.maximum(2 * tp + wrong, 1))


def high_pass(x, sigma: float = HIGH_PASS_SIGMA) -> np.ndarray:
  """float64 [B, H, W, C] minus its Gaussian blur over H and W (replicated borders)."""
  return x - scipy.ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest")


def high_frequency_psnr(images, reconstructions, sigma: float = HIGH_PASS_SIGMA) -> np.ndarray:
  """[B] PSNR of the high band only: 10 log10(range^2 / mean((HP(x) - HP(x_rec))^2)); inf where
  the high bands agree. A brightness offset or a smooth shading error does not lower it; lost
  or invented strokes do."""
  a, b, data_range = _prepare(images, reconstructions, "high_frequency_psnr")
  mse = (high_pass(a - b, sigma) ** 2).mean(axis=(1, 2, 3))
  with np.errstate(divide="ignore"):
    return 10.0 * np.log10(data_range ** 2 / mse)


def high_frequency_energy_ratio(images, reconstructions, sigma: float = HIGH_PASS_SIGMA
                                ) -> float:
  """sum ||HP(x_rec)||^2 / sum ||HP(x)||^2 over the batch (pooled, so that a near-blank image
  cannot dominate): below 1 the reconstructions are smoother than the originals (detail lost to
  blur), above 1 they carry detail the originals do not."""
  a, b, _ = _prepare(images, reconstructions, "high_frequency_energy_ratio")
  ea, eb = (high_pass(a, sigma) ** 2).sum(), (high_pass(b, sigma) ** 2).sum()
  if ea == 0:
    raise ValueError("high_frequency_energy_ratio: the original images have no high-frequency "
                     "energy (all constant); the ratio is undefined")
  return float(eb / ea)


def detail_subset(images, fraction: float = DETAIL_FRACTION) -> np.ndarray:
  """int [ceil(fraction B)] indices of the images with the largest mean gradient magnitude (the
  most edges), most detailed first; ties keep index order."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"detail_subset: fraction={fraction}; expected 0 < fraction <= 1")
  score = gradient_magnitude(images).mean(axis=(1, 2, 3))
  k = int(np.ceil(fraction * len(score)))
  return np.argsort(-score, kind="stable")[:k]


def detail_metrics(images, reconstructions) -> dict:
  """Means over images of the detail measures, plus PSNR and SSIM on the detail subset."""
  images, reconstructions = np.asarray(images), np.asarray(reconstructions)
  keep = detail_subset(images)
  cap = lambda v: np.minimum(v, 100.0)   # identical images: inf, reported as 100 dB like psnr.
  return {
      "edge_f1": float(np.mean(edge_f1(images, reconstructions))),
      "hf_psnr": float(np.mean(cap(high_frequency_psnr(images, reconstructions)))),
      "hf_energy_ratio": high_frequency_energy_ratio(images, reconstructions),
      "detail_psnr": float(np.mean(cap(psnr(images[keep], reconstructions[keep])))),
      "detail_ssim": float(np.mean(ssim(images[keep], reconstructions[keep]))),
  }
