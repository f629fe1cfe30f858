"""The offline evaluator: vendored classifier accuracy, FD that separates real from corrupted
data, score() outputs, bad inputs, and the weight-building script in smoke mode."""
import importlib.util
import os

import numpy as np
import pytest

from arjax.data.idx import load_bundled
from arjax.evaluate import classifier as classifier_lib
from arjax.evaluate import metrics
from arjax.evaluate import offline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_EVALUATORS = {}


def _evaluator(name):
  """One evaluator per data set for the module: reference features are computed once."""
  if name not in _EVALUATORS:
    _EVALUATORS[name] = offline.OfflineEvaluator(name)
  return _EVALUATORS[name]


@pytest.fixture(scope="module")
def mnist():
  return _evaluator("mnist")


@pytest.mark.parametrize("name,floor", [("mnist", 0.98), ("fashion_mnist", 0.89)])
def test_vendored_weights_accuracy(name, floor):
  path = offline.weights_path(name)
  assert os.path.getsize(path) < 1_000_000
  ev = _evaluator(name)
  acc = ev.accuracy("test")   # all 10k test images
  assert acc >= floor, f"{name}: test accuracy {acc:.4f} < {floor}"
  assert ev.meta["test_accuracy"] == pytest.approx(acc, abs=1e-6)


def _shuffle_pixels(images, rng):
  flat = images.reshape(len(images), -1)
  return np.take_along_axis(flat, rng.permuted(np.tile(np.arange(784), (len(images), 1)), axis=1),
                            axis=1).reshape(images.shape)


def test_fd_separates_real_from_corrupted():
  ev = _evaluator("mnist")
  rng = np.random.default_rng(0)
  train, _ = load_bundled("mnist", "train")
  real = train[rng.choice(len(train), 5000, replace=False)]
  noisy = np.clip(real + rng.normal(0, 64, real.shape), 0, 255).astype(np.uint8)
  ref = ev.reference_stats("test")

  def fd(images):  # FD only: score() would also run precision/recall
    return metrics.frechet_distance(*metrics.feature_statistics(ev.features(images)), *ref)

  fd_real, fd_shuffled, fd_noisy = fd(real), fd(_shuffle_pixels(real, rng)), fd(noisy)
  # Observed with the vendored weights: 1.24, 636 and 83 (ratios 1/510 and 1/67).
  assert fd_real < 3.0
  assert fd_real < fd_shuffled / 100
  assert fd_real < fd_noisy / 10


def test_score_outputs(mnist):
  images, labels = load_bundled("mnist", "test")
  out = mnist.score(images[:2000], labels[:2000])
  assert set(out) == {"fd", "class_accuracy", "precision", "recall", "num_samples"}
  assert out["class_accuracy"] > 0.97
  # A subset of the reference itself: every sample lies in the real manifold, and 2000 of the
  # 10000 balls cover most (observed 0.90) of the reference.
  assert out["precision"] == 1.0 and out["recall"] > 0.8
  assert out["num_samples"] == 2000
  wrong = mnist.score(images[:2000], (labels[:2000] + 1) % 10)
  assert wrong["class_accuracy"] < 0.05
  assert wrong["fd"] == out["fd"]
  assert mnist.score(images[:2000])["class_accuracy"] is None
  mu, sigma = mnist.reference_stats("test")
  assert mu.shape == (mnist.feature_dim,) and sigma.shape == (mnist.feature_dim,) * 2


def test_bad_inputs_name_values(mnist):
  images, labels = load_bundled("mnist", "test")
  with pytest.raises(ValueError, match=r"100 samples but the feature dimension is 128"):
    mnist.score(images[:100])
  with pytest.raises(ValueError, match=r"\[N, 28, 28, 1\], got shape \(300, 28, 28\)"):
    mnist.score(images[:300, :, :, 0])
  with pytest.raises(ValueError, match="uint8.*float32"):
    mnist.score(images[:300].astype(np.float32) / 255)
  with pytest.raises(ValueError, match=r"labels must have shape \(300,\).*\(299,\)"):
    mnist.score(images[:300], labels[:299])
  with pytest.raises(KeyError, match="cifar10"):
    offline.OfflineEvaluator("cifar10")


def test_missing_weights_say_how_to_build(tmp_path):
  with pytest.raises(FileNotFoundError, match="build_evaluator.py"):
    offline.OfflineEvaluator("mnist", weights=str(tmp_path / "none.msgpack"))


def test_build_evaluator_smoke(tmp_path, capsys):
  spec = importlib.util.spec_from_file_location(
      "build_evaluator", os.path.join(ROOT, "experiments", "build_evaluator.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  out = str(tmp_path / "smoke.msgpack")
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    assert module.main(["--config", "configs/evaluators/classifier.py:dataset=mnist,smoke",
                        "--out", out]) == 0
  finally:
    os.chdir(cwd)
  assert "test_accuracy" in capsys.readouterr().out
  model, meta = classifier_lib.load_classifier(out)
  assert meta["dataset"] == "mnist" and meta["config"]["steps"] == 20
  images, labels = load_bundled("mnist", "test")
  assert classifier_lib.accuracy(model, images[:1000], labels[:1000]) > 0.3  # 20 steps: > chance
