"""Sample-quality metrics on feature vectors: Fréchet distance, Inception Score, precision/recall.

Everything here is float64 numpy/scipy on host arrays: the feature network (InceptionV3, the
offline MNIST classifier) runs on the accelerator, and its outputs come here. Feature
statistics are accumulated by `FeatureStats`, a streaming (Chan et al. 1979) mean and scatter
matrix, so FID does not depend on the batch size used to extract features and 50k x 2048
features never have to be held at once.

  - Fréchet distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule
    Converge to a Local Nash Equilibrium"): FID on InceptionV3 pool3 features, sFID (Nash et
    al. 2021, "Generating Images with Sparse Representations") on the first 7 channels of the
    mixed_6/conv map, and the offline FD on the bundled classifier's penultimate features.
  - Inception Score (Salimans et al. 2016, "Improved Techniques for Training GANs").
  - k-NN precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric
    for Assessing Generative Models"), k = 3 as in the paper and the ADM evaluation suite.

Shape legend: N samples (generated), M samples (reference), D feature dimension, C classes.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import scipy.linalg
import scipy.special


def _as_features(x, name: str) -> np.ndarray:
  """Checks `x` is a finite [N, D] array and returns it as float64."""
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name}: expected features of shape [N, D], got shape {x.shape}")
  x = x.astype(np.float64, copy=False)
  if not np.all(np.isfinite(x)):
    bad = int(np.sum(~np.isfinite(x).all(axis=1)))
    raise ValueError(f"{name}: {bad} of {x.shape[0]} feature rows contain NaN or inf")
  return x


class FeatureStats:
  """Streaming mean and covariance of feature vectors, exact for any batch split.

  Keeps the count, the mean and the centred scatter matrix M2 = sum (x - mean)(x - mean)^T
  and merges each batch with Chan et al.'s pairwise update. Summing raw second moments
  (sum x x^T) instead would lose digits to cancellation when features have a large mean
  (Inception pool3 features are all positive), which is why the centred form is kept.

  Attributes:
    count: number of feature vectors seen.
    dim: D, fixed by the first update (or the constructor).
  """

  def __init__(self, dim: Optional[int] = None):
    self.dim = dim
    self.count = 0
    self._mean = None if dim is None else np.zeros(dim, np.float64)
    self._m2 = None if dim is None else np.zeros((dim, dim), np.float64)

  def update(self, features) -> "FeatureStats":
    """Adds a batch of features [B, D]; returns self."""
    x = _as_features(features, "FeatureStats.update")
    if self.dim is None:
      self.dim = x.shape[1]
      self._mean = np.zeros(self.dim, np.float64)
      self._m2 = np.zeros((self.dim, self.dim), np.float64)
    if x.shape[1] != self.dim:
      raise ValueError(f"FeatureStats.update: batch has feature dimension {x.shape[1]} but the "
                       f"statistics have dimension {self.dim}")
    if x.shape[0] == 0:
      return self
    b_mean = x.mean(axis=0)
    centred = x - b_mean
    b_m2 = centred.T @ centred
    self._merge(x.shape[0], b_mean, b_m2)
    return self

  def merge(self, other: "FeatureStats") -> "FeatureStats":
    """Adds another accumulator's statistics (e.g. from another host); returns self."""
    if other.count == 0:
      return self
    if self.dim is None:
      self.dim = other.dim
      self._mean = np.zeros(self.dim, np.float64)
      self._m2 = np.zeros((self.dim, self.dim), np.float64)
    if other.dim != self.dim:
      raise ValueError(f"FeatureStats.merge: dimensions differ ({self.dim} vs {other.dim})")
    self._merge(other.count, other._mean, other._m2)
    return self

  def _merge(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray):
    n_a = self.count
    n = n_a + n_b
    delta = mean_b - self._mean
    self._mean = self._mean + delta * (n_b / n)
    self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
    self.count = n

  @property
  def mean(self) -> np.ndarray:
    """[D] mean of all features seen."""
    self._check_nonempty()
    return self._mean.copy()

  def covariance(self) -> np.ndarray:
    """[D, D] unbiased covariance (ddof=1, as np.cov in pytorch-fid and the ADM suite)."""
    self._check_nonempty()
    if self.count < 2:
      raise ValueError("FeatureStats: the covariance needs at least 2 samples, got 1")
    return self._m2 / (self.count - 1)

  def finalize(self, allow_singular: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Returns (mu [D], sigma [D, D]).

    Args:
      allow_singular: if False, fewer than D + 1 samples is an error, because their
        covariance has rank < D and a Fréchet distance computed from it mostly measures the
        sample count rather than the distribution.
    """
    self._check_nonempty()
    if not allow_singular and self.count <= self.dim:
      raise ValueError(
          f"FeatureStats: {self.count} samples for feature dimension D={self.dim}; the "
          f"covariance is rank-deficient (rank <= {self.count - 1} < {self.dim}). Use at least "
          f"{self.dim + 1} samples (FID conventionally uses 10k-50k) or allow_singular=True.")
    return self.mean, self.covariance()

  def _check_nonempty(self):
    if self.count == 0:
      raise ValueError("FeatureStats: no features were added")


def feature_statistics(features, batch_size: Optional[int] = None,
                       allow_singular: bool = False) -> Tuple[np.ndarray, np.ndarray]:
  """(mu [D], sigma [D, D]) of features [N, D], accumulated in batches of `batch_size`."""
  x = _as_features(features, "feature_statistics")
  stats = FeatureStats(x.shape[1])
  step = len(x) if not batch_size else batch_size
  for i in range(0, len(x), max(step, 1)):
    stats.update(x[i:i + step])
  return stats.finalize(allow_singular=allow_singular)


def _check_stats(mu, sigma, name: str) -> Tuple[np.ndarray, np.ndarray]:
  mu = np.atleast_1d(np.asarray(mu, np.float64))
  sigma = np.atleast_2d(np.asarray(sigma, np.float64))
  if mu.ndim != 1:
    raise ValueError(f"{name}: mu must be a vector [D], got shape {mu.shape}")
  if sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"{name}: sigma must be [D, D] = [{mu.shape[0]}, {mu.shape[0]}] to match mu, "
                     f"got shape {sigma.shape}")
  if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
    raise ValueError(f"{name}: mu or sigma contains NaN or inf")
  return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "eigh", eps: float = 1e-6) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017).

    d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})

  Args:
    mu1, mu2: [D] means.
    sigma1, sigma2: [D, D] covariances.
    method: "eigh" computes tr((s1 s2)^{1/2}) as the sum of square roots of the eigenvalues of
      the symmetric PSD matrix s1^{1/2} s2 s1^{1/2} (same spectrum as s1 s2). It is about 10x
      faster than a general matrix square root at D = 2048 and never produces the complex
      round-off that pytorch-fid has to discard. "sqrtm" is the reference formula of
      pytorch-fid / the ADM suite (scipy.linalg.sqrtm of s1 s2, with an eps * I retry when the
      product is singular); the two agree to ~1e-9 relative on full-rank statistics.
    eps: the diagonal offset of the "sqrtm" retry.

  Returns:
    The squared Fréchet distance (what papers report as FID) as a Python float.
  """
  mu1, sigma1 = _check_stats(mu1, sigma1, "frechet_distance (first)")
  mu2, sigma2 = _check_stats(mu2, sigma2, "frechet_distance (second)")
  if mu1.shape != mu2.shape:
    raise ValueError(f"frechet_distance: feature dimensions differ: first statistics have "
                     f"D={mu1.shape[0]}, second have D={mu2.shape[0]} (were both computed with "
                     "the same feature network and layer?)")
  diff = mu1 - mu2
  if method == "eigh":
    # Symmetrise: covariances accumulated in floating point are symmetric only to round-off.
    s1 = (sigma1 + sigma1.T) / 2
    s2 = (sigma2 + sigma2.T) / 2
    w, v = np.linalg.eigh(s1)
    sqrt_s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt_s1 @ s2 @ sqrt_s1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sum(np.sqrt(np.clip(ev, 0, None))))
  elif method == "sqrtm":
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
      offset = np.eye(sigma1.shape[0]) * eps
      covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
      if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
        raise ValueError(f"frechet_distance: imaginary component "
                         f"{np.max(np.abs(covmean.imag))} in sqrtm(sigma1 sigma2)")
      covmean = covmean.real
    tr_covmean = float(np.trace(covmean))
  else:
    raise ValueError(f"frechet_distance: unknown method {method!r}; expected 'eigh' or 'sqrtm'")
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def frechet_distance_from_features(features1, features2, method: str = "eigh") -> float:
  """Fréchet distance between two feature sets [N, D] and [M, D]; each needs > D rows."""
  x1 = _as_features(features1, "frechet_distance_from_features (first)")
  x2 = _as_features(features2, "frechet_distance_from_features (second)")
  if x1.shape[1] != x2.shape[1]:
    raise ValueError(f"frechet_distance_from_features: feature dimensions differ "
                     f"({x1.shape[1]} vs {x2.shape[1]})")
  return frechet_distance(*feature_statistics(x1), *feature_statistics(x2), method=method)


def inception_score(logits=None, *, probs=None, splits: int = 10) -> Tuple[float, float]:
  """Inception Score exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016).

  As in the original code and the ADM suite, the N samples are cut into `splits` consecutive
  equal parts (the last takes the remainder), the marginal p(y) is estimated inside each part,
  and the mean and standard deviation of the per-part scores are returned. 50k samples in 10
  parts is the convention; with InceptionV3 use the unbiased logits (pool3 @ W, no bias), which
  is what the TF graph's softmax path in the original code computes.

  Args:
    logits: [N, C] unnormalised log-probabilities (preferred: log_softmax is exact in float64).
    probs: [N, C] probabilities instead of logits.
    splits: number of parts.

  Returns:
    (mean, std) of the per-part scores.
  """
  if (logits is None) == (probs is None):
    raise ValueError("inception_score: pass exactly one of logits or probs")
  if logits is not None:
    logp = scipy.special.log_softmax(_as_features(logits, "inception_score logits"), axis=1)
  else:
    p = _as_features(probs, "inception_score probs")
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
      raise ValueError("inception_score: probs rows must be non-negative and sum to 1")
    with np.errstate(divide="ignore"):
      logp = np.log(p)
  n = logp.shape[0]
  if not 1 <= splits <= n:
    raise ValueError(f"inception_score: splits={splits} must be between 1 and N={n}")
  scores = []
  size = n // splits
  for i in range(splits):
    part = logp[i * size: (i + 1) * size if i < splits - 1 else n]
    p = np.exp(part)
    # log of the part's marginal p(y), via logsumexp so tiny probabilities keep their digits.
    log_py = scipy.special.logsumexp(part, axis=0) - np.log(part.shape[0])
    # xlogy-style: 0 * (log 0 - ...) = 0 where a class has zero probability.
    kl = np.where(p > 0, p * (part - log_py[None, :]), 0.0).sum(axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[A, B] squared Euclidean distances, |a|^2 - 2 a.b + |b|^2 clipped at 0 (round-off)."""
  d = (a * a).sum(1)[:, None] - 2.0 * (a @ b.T) + (b * b).sum(1)[None, :]
  return np.maximum(d, 0.0)


def knn_radii(features, k: int = 3, batch_size: int = 5000) -> np.ndarray:
  """[N] squared distance of each feature vector to its k-th nearest other vector.

  The vector itself is at distance 0 and is element 0 of the sorted row, so the k-th
  neighbour is element k: the convention of Kynkäänniemi et al. and the ADM suite.
  """
  x = _as_features(features, "knn_radii")
  if x.shape[0] <= k:
    raise ValueError(f"knn_radii: need more than k={k} samples, got {x.shape[0]}")
  out = np.empty(x.shape[0], np.float64)
  for i in range(0, x.shape[0], batch_size):
    d = _sq_dists(x[i:i + batch_size], x)
    out[i:i + batch_size] = np.partition(d, k, axis=1)[:, k]
  return out


def precision_recall(real_features, fake_features, k: int = 3, batch_size: int = 5000,
                     real_radii: Optional[np.ndarray] = None) -> Tuple[float, float]:
  """k-NN precision and recall (Kynkäänniemi et al. 2019).

  Each set's manifold is the union of balls around its points with radius the distance to
  the k-th nearest neighbour in the same set. Precision is the fraction of generated samples
  inside the real manifold (fidelity); recall is the fraction of real samples inside the
  generated manifold (coverage). Like the paper, the estimate trusts every real point's ball:
  a few real outliers with large balls can make even off-manifold samples count as precise,
  which is why recall (and FD) should be read alongside it.

  Args:
    real_features: [M, D] reference features.
    fake_features: [N, D] generated features.
    k: neighbourhood size (3 in the paper and the ADM suite).
    batch_size: rows per distance block; memory is batch_size * max(M, N) float64s.
    real_radii: [M] squared k-NN radii of the real features (`knn_radii(real, k)`), when
      cached across calls: the M x M pass is the most expensive part.

  Returns:
    (precision, recall) in [0, 1].
  """
  real = _as_features(real_features, "precision_recall real")
  fake = _as_features(fake_features, "precision_recall fake")
  if real.shape[1] != fake.shape[1]:
    raise ValueError(f"precision_recall: feature dimensions differ (real D={real.shape[1]}, "
                     f"fake D={fake.shape[1]})")
  if real_radii is None:
    real_radii = knn_radii(real, k, batch_size)
  elif np.shape(real_radii) != (real.shape[0],):
    raise ValueError(f"precision_recall: real_radii has shape {np.shape(real_radii)}, expected "
                     f"({real.shape[0]},)")
  fake_radii = knn_radii(fake, k, batch_size)
  # One pass over the N x M cross distances serves both directions.
  fake_inside = np.zeros(fake.shape[0], bool)
  real_inside = np.zeros(real.shape[0], bool)
  for i in range(0, fake.shape[0], batch_size):
    d = _sq_dists(fake[i:i + batch_size], real)                              # [b, M]
    fake_inside[i:i + batch_size] = np.any(d <= real_radii[None, :], axis=1)
    real_inside |= np.any(d <= fake_radii[i:i + batch_size, None], axis=0)
  return float(fake_inside.mean()), float(real_inside.mean())
