"""Offline sample quality for the bundled 28x28 data sets, with vendored classifier weights.

No Inception weights can be fetched on an offline machine, and Inception features describe
28x28 digits poorly anyway, so samples of the bundled MNIST / Fashion-MNIST models are scored
in the feature space of a small CNN trained on the same data (arjax.evaluate.classifier,
weights in arjax/evaluate/weights/). `OfflineEvaluator.score` reports

  fd              Fréchet distance (Heusel et al. 2017) between the classifier's penultimate
                  features [N, F] of the samples and of the test split (10k images). FID's
                  formula, but not comparable with Inception FIDs.
  class_accuracy  fraction of samples the classifier assigns to the class they were
                  generated for (class-conditional models), a standard conditional-fidelity
                  check; None without labels.
  precision,      k-NN precision and recall (Kynkäänniemi et al. 2019, k = 3) against the
  recall          test-split features.

Reference features (and their k-NN radii) are computed once per (data set, split) and cached
in memory for the process.

For scale, 10k random train images against the test split (vendored weights):
                        FD     precision  recall
  MNIST    real       0.73     0.86       0.88
           noise s=64  83      0.81       0.21
           2x2 blur    68      0.90       0.15
           shuffled   637      0.91       0.00
  Fashion  real       0.35     0.88       0.87
           noise s=64 242      0.80       0.00
           2x2 blur    16      0.90       0.37
           shuffled   354      0.73       0.00
FD is biased upwards at small N (MNIST real: 1.24 at 5k), so compare runs at equal N. Note
the precision of pixel-shuffled images: their features collapse into a small region that a
few wide real k-NN balls cover, the known weakness of k-NN precision; FD and recall catch it.

Shape legend: N samples, F feature dimension (128).
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np

from arjax.evaluate import classifier as classifier_lib
from arjax.evaluate import metrics

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")

# (weights path, data set, split) -> (features [M, F], mu [F], sigma [F, F], accuracy);
# process-wide so that every evaluator (one per eval step, or per notebook cell) shares it.
_REFERENCE_CACHE: Dict[Tuple[str, str, str], Tuple[np.ndarray, np.ndarray, np.ndarray, float]] = {}
# (weights path, data set, split, k) -> squared k-NN radii [M] for precision/recall.
_RADII_CACHE: Dict[Tuple[str, str, str, int], np.ndarray] = {}


def weights_path(dataset_name: str) -> str:
  return os.path.join(WEIGHTS_DIR, f"{dataset_name}_classifier.msgpack")


class OfflineEvaluator:
  """Scores uint8 [N, 28, 28, 1] samples of a bundled data set; see the module docstring."""

  def __init__(self, dataset_name: str, weights: Optional[str] = None, batch_size: int = 1000):
    from arjax.data.idx import BUNDLED
    if dataset_name not in BUNDLED:
      raise KeyError(f"OfflineEvaluator: unknown data set {dataset_name!r}; vendored classifiers "
                     f"exist for {sorted(BUNDLED)}")
    self.dataset_name = dataset_name
    self.weights = weights or weights_path(dataset_name)
    self.model, self.meta = classifier_lib.load_classifier(self.weights)
    self.batch_size = batch_size
    self._apply = classifier_lib.make_apply(self.model, "features_and_logits")

  @property
  def feature_dim(self) -> int:
    return self.model.feature_dim

  def _check_images(self, images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (28, 28, 1):
      raise ValueError(f"OfflineEvaluator({self.dataset_name}): expected images [N, 28, 28, 1], "
                       f"got shape {images.shape}")
    if images.dtype != np.uint8:
      raise ValueError(f"OfflineEvaluator({self.dataset_name}): expected uint8 images in 0..255, "
                       f"got dtype {images.dtype}")
    return images

  def features_and_predictions(self, images) -> Tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 28, 28, 1] -> (float64 penultimate features [N, F], predicted class [N])."""
    images = self._check_images(images)
    feats, logits = classifier_lib.batched(self._apply, images, self.batch_size)
    return feats.astype(np.float64), logits.argmax(-1)

  def features(self, images) -> np.ndarray:
    """uint8 [N, 28, 28, 1] -> float64 penultimate features [N, F]."""
    return self.features_and_predictions(images)[0]

  def predict(self, images) -> np.ndarray:
    """uint8 [N, 28, 28, 1] -> predicted class [N]."""
    return self.features_and_predictions(images)[1]

  def _reference(self, split: str):
    key = (os.path.abspath(self.weights), self.dataset_name, split)
    if key not in _REFERENCE_CACHE:
      from arjax.data.idx import load_bundled
      images, labels = load_bundled(self.dataset_name, split)
      feats, pred = self.features_and_predictions(images)
      mu, sigma = metrics.feature_statistics(feats)
      _REFERENCE_CACHE[key] = (feats, mu, sigma, float((pred == labels).mean()))
    return _REFERENCE_CACHE[key]

  def _reference_radii(self, split: str, k: int) -> np.ndarray:
    key = (os.path.abspath(self.weights), self.dataset_name, split, k)
    if key not in _RADII_CACHE:
      _RADII_CACHE[key] = metrics.knn_radii(self._reference(split)[0], k)
    return _RADII_CACHE[key]

  def reference_stats(self, split: str = "test") -> Tuple[np.ndarray, np.ndarray]:
    """(mu [F], sigma [F, F]) of the split's features (cached)."""
    _, mu, sigma, _ = self._reference(split)
    return mu, sigma

  def reference_features(self, split: str = "test") -> np.ndarray:
    """[M, F] features of every image of the split (cached)."""
    return self._reference(split)[0]

  def accuracy(self, split: str = "test") -> float:
    """Classifier accuracy on a split of the bundled data (cached with the features)."""
    return self._reference(split)[3]

  def score(self, samples, labels=None, split: str = "test",
            k: int = 3) -> Dict[str, Optional[float]]:
    """Scores generated samples against a split of the bundled data.

    Args:
      samples: uint8 [N, 28, 28, 1]; N must exceed the feature dimension F (128) for the
        covariance to have full rank. 10k samples (the test split's size) give FDs
        comparable across runs; FD is biased upwards at small N.
      labels: optional int [N], the class each sample was generated for.
      split: reference split ('test' or 'train').
      k: neighbourhood size for precision/recall.

    Returns:
      dict(fd, class_accuracy, precision, recall, num_samples).
    """
    samples = self._check_images(samples)
    n, f = samples.shape[0], self.feature_dim
    if n <= f:
      raise ValueError(f"OfflineEvaluator.score: {n} samples but the feature dimension is {f}; "
                       f"the sample covariance would be rank-deficient. Pass at least {f + 1} "
                       "samples (10000 for numbers comparable across runs).")
    if labels is not None:
      labels = np.asarray(labels)
      if labels.shape != (n,):
        raise ValueError(f"OfflineEvaluator.score: labels must have shape ({n},) to match the "
                         f"samples, got {labels.shape}")
    ref_feats, ref_mu, ref_sigma, _ = self._reference(split)
    feats, pred = self.features_and_predictions(samples)
    mu, sigma = metrics.feature_statistics(feats)
    fd = metrics.frechet_distance(mu, sigma, ref_mu, ref_sigma)
    precision, recall = metrics.precision_recall(ref_feats, feats, k=k,
                                                 real_radii=self._reference_radii(split, k))
    class_accuracy = None if labels is None else float((pred == labels).mean())
    return {"fd": fd, "class_accuracy": class_accuracy, "precision": precision,
            "recall": recall, "num_samples": int(n)}
