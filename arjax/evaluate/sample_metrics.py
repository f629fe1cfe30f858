"""Sample-quality metrics of a trained run: generate N class-conditional samples on the mesh,
extract features, score them (`python -m arjax.evaluate --metrics fd,...` is a thin CLI over this).

Metrics:
  fd, class_accuracy, precision, recall   offline classifier feature space of the run's bundled
      data set (arjax.evaluate.offline). NOT comparable with Inception FIDs.
  fid, is                                 Flax InceptionV3 (pool3 / logits); need converted
      pytorch-fid weights, and for fid a reference .npz (ADM layout).
  bpd                                     test bits/dim (Experiment.bits_per_dim).

Determinism: batch b of the run uses key fold_in(key(seed), b) and labels (i mod classes) for
global sample index i, and the batch is split over the mesh's data axis with NamedSharding.
jax's partitionable threefry makes random bits a function of the element index, not of the
layout, so for a given seed and batch size the samples are identical on 1 or 8 devices.

Shape legend: N samples, B batch, H/W image side, C channels, F feature dimension.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

SAMPLE_METRICS = ("fd", "prec_rec", "fid", "sfid", "is", "iprec_rec")
# Metrics in InceptionV3 space (need --inception_weights); iprec_rec is ADM's precision/recall.
INCEPTION_METRICS = ("fid", "sfid", "is", "iprec_rec")
# recon: a tokenizer's reconstruction metrics (arjax.train.evaluation.tokenizer_metrics).
METRICS = ("bpd", "recon") + SAMPLE_METRICS


def parse_metrics(spec: str) -> list:
  names = [m.strip() for m in spec.split(",") if m.strip()]
  unknown = [m for m in names if m not in METRICS]
  if unknown or not names:
    raise ValueError(f"--metrics {spec!r}: unknown metric(s) {unknown}; choose from {list(METRICS)}")
  return names


def balanced_labels(n: int, num_classes: int) -> np.ndarray:
  """int32 [N]: classes cycle 0, 1, ..., so every class gets floor or ceil(N / classes)."""
  return (np.arange(n) % num_classes).astype(np.int32)


def generate_samples(exp, params, num_samples: int, seed: int = 0, batch_size: int = 64,
                     sampling=None, progress: bool = True):
  """-> (uint8 images [N, H, W, C], int32 labels [N]) sampled batch by batch on exp.mesh."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from arjax.sampling import SamplingConfig

  if num_samples <= 0:
    raise ValueError(f"num_samples={num_samples}; expected a positive number")
  data = exp.mesh.shape.get("data", 1)
  if batch_size % data:
    raise ValueError(f"batch_size={batch_size} must be divisible by the mesh's data axis ({data})")
  sampling = sampling or SamplingConfig()
  # The Experiment's sampler for these options (the one the model's order needs), built and
  # compiled once per Experiment: the trainer's sample_quality evaluator calls this every run.
  sampler = exp.sampler(sampling)
  sharding = NamedSharding(exp.mesh, P("data"))
  labels = balanced_labels(num_samples, exp.config.model.num_classes)
  decode = exp.cached("decode_tokens",
                      lambda: jax.jit(lambda p, t: exp.fm.bind(p).tokenizer.decode(t)))
  key = jax.random.key(seed)
  out = []
  nb = -(-num_samples // batch_size)
  it = range(nb)
  if progress:
    from tqdm import tqdm
    it = tqdm(it, desc=f"sampling {num_samples}", unit="batch")
  for b in it:
    lab = labels[b * batch_size:(b + 1) * batch_size]
    # The last batch is padded to the full size: one compiled shape, and its samples do not
    # depend on how many are kept.
    lab = np.concatenate([lab, np.zeros(batch_size - len(lab), np.int32)]) if len(lab) < batch_size else lab
    lab_g = jax.device_put(jnp.asarray(lab), sharding)
    tokens = sampler.sample_tokens(params, lab_g, jax.random.fold_in(key, b))
    out.append(np.asarray(jax.device_get(decode(params, tokens))))
  return np.concatenate(out)[:num_samples], labels


def to_28(images: np.ndarray) -> np.ndarray:
  """uint8 [N, h, w, 1] -> [N, 28, 28, 1] for the offline classifier (nearest for integer
  factors, so the grey levels of the tokenizer are kept; area/bilinear otherwise)."""
  from arjax.data.preprocess import resize_images
  h, w = images.shape[1:3]
  if (h, w) == (28, 28):
    return images
  if 28 % h == 0 and 28 % w == 0:
    return np.repeat(np.repeat(images, 28 // h, 1), 28 // w, 2)
  return resize_images(images, (28, 28), "bilinear")


def as_model_sees(images: np.ndarray, config, size) -> np.ndarray:
  """Real uint8 images -> what the run's pixel tokenizer can represent (area resize to the
  sample size, quantise to its grey levels), so the reference differs from the samples by
  the model's errors and not by the tokenizer's resolution."""
  from arjax.data.preprocess import quantize_table, resize_images
  x = resize_images(images, tuple(size), "area")
  t = config.get("tokenizer", {})
  if t.get("name") == "pixel" and t.get("levels"):
    x = quantize_table(int(t["levels"]))[x]
  return x


_REF_CACHE: Dict[tuple, tuple] = {}
_EVALUATOR_CACHE: Dict[str, object] = {}  # data set -> OfflineEvaluator


def offline_scores(config, samples, labels, split: str = "test", k: int = 3) -> Dict[str, float]:
  """fd / class_accuracy / precision / recall against the split, seen at the sample resolution."""
  from arjax.evaluate import metrics
  from arjax.evaluate.offline import OfflineEvaluator
  from arjax.data.idx import load_bundled
  name = config.data.source
  # One classifier (and its jitted feature function) per data set and process: the trainer's
  # sample_quality evaluator scores every evaluation without compiling it again.
  if name not in _EVALUATOR_CACHE:
    _EVALUATOR_CACHE[name] = OfflineEvaluator(name)
  ev = _EVALUATOR_CACHE[name]
  n, f = samples.shape[0], ev.feature_dim
  if n <= f:
    raise ValueError(f"fd: {n} samples but the offline classifier's feature dimension is {f}; "
                     f"the covariance would be rank-deficient. Use --num_samples >= {f + 1}.")
  key = (name, split, samples.shape[1:3], str(config.get("tokenizer", {}).get("levels")))
  if key not in _REF_CACHE:
    real, _ = load_bundled(name, split)
    rf = ev.features(to_28(as_model_sees(real, config, samples.shape[1:3])))
    _REF_CACHE[key] = (rf, *metrics.feature_statistics(rf), metrics.knn_radii(rf, k))
  rf, rmu, rsig, radii = _REF_CACHE[key]
  feats, pred = ev.features_and_predictions(to_28(samples))
  mu, sig = metrics.feature_statistics(feats)
  prec, rec = metrics.precision_recall(rf, feats, k=k, real_radii=radii)
  return {"fd": metrics.frechet_distance(mu, sig, rmu, rsig),
          "class_accuracy": float((pred == labels).mean()), "precision": prec, "recall": rec,
          "feature_mean": mu, "feature_cov": sig}


def inception_scores(samples, weights: str, reference: Optional[str], want: Sequence[str],
                     batch_size: int = 50, extractor=None) -> Dict[str, float]:
  """FID (pool3), sFID (spatial), IS (logits) and ADM's precision/recall (pool3, k = 3).

  samples uint8 [N, H, W, 3]. `reference` is an ADM-layout .npz: fid needs mu/sigma, sfid
  mu_s/sigma_s, iprec_rec arr_0 (reference images, run through the same network, or their
  pool3 activations). `extractor` (images -> dict of features) replaces the network in tests.
  """
  import os
  from arjax.evaluate import inception, metrics
  from arjax.evaluate.reference_stats import load_reference_stats
  if extractor is None:
    if not weights:
      raise ValueError(f"metrics {list(want)} need --inception_weights FILE (converted "
                       "pt_inception-2015-12-05 weights; see docs/evaluation.md)")
    if not os.path.isfile(weights):
      raise FileNotFoundError(f"--inception_weights {weights!r} not found")
  needs_ref = [m for m in want if m in ("fid", "sfid", "iprec_rec")]
  if needs_ref and not reference:
    raise ValueError(f"metric(s) {needs_ref} need --reference stats.npz (ADM layout; "
                     "python -m arjax.evaluate.reference writes one)")
  ref = load_reference_stats(reference) if needs_ref else None
  # Checked before running the network on N samples, so a wrong file fails in seconds.
  if "sfid" in want and ref.mu_s is None:
    raise KeyError(f"--reference {reference}: no 'mu_s'/'sigma_s' (sFID spatial statistics); "
                   "ADM's reference batches have them, pytorch-fid's files do not")
  if "iprec_rec" in want and not ref.has_arr_0:
    raise KeyError(f"--reference {reference}: no 'arr_0' (reference images or pool3 "
                   "activations), which precision/recall need per sample")
  if extractor is None:
    extractor = inception.make_extractor(inception.load_inception(weights), batch_size)
  out = extractor(samples)
  res = {}
  if "fid" in want:
    if ref.dim != out["pool3"].shape[1]:
      raise ValueError(f"--reference {reference}: mu has D={ref.dim} but InceptionV3 pool3 "
                       f"features have D={out['pool3'].shape[1]}")
    mu, sig = metrics.feature_statistics(out["pool3"])
    res["fid"] = metrics.frechet_distance(mu, sig, ref.mu, ref.sigma)
  if "sfid" in want:
    if ref.mu_s.shape[0] != out["spatial"].shape[1]:
      raise ValueError(f"--reference {reference}: mu_s has S={ref.mu_s.shape[0]} but the "
                       f"spatial features have S={out['spatial'].shape[1]}")
    mu, sig = metrics.feature_statistics(out["spatial"])
    res["sfid"] = metrics.frechet_distance(mu, sig, ref.mu_s, ref.sigma_s)
  if "is" in want:
    res["is"], res["is_std"] = metrics.inception_score(out["logits"])
  if "iprec_rec" in want:
    real = ref.arr_0()
    real = extractor(real)["pool3"] if ref.arr_0_kind == "images" else real
    if real.shape[1] != out["pool3"].shape[1]:
      raise ValueError(f"--reference {reference}: arr_0 activations have D={real.shape[1]} "
                       f"but InceptionV3 pool3 features have D={out['pool3'].shape[1]}")
    res["inception_precision"], res["inception_recall"] = metrics.precision_recall(
        real, out["pool3"], k=3)
  return res


def check_offline_reference(reference: str, feature_dim: int):
  from arjax.evaluate.reference_stats import load_reference_stats
  ref = load_reference_stats(reference)
  if ref.dim != feature_dim:
    raise ValueError(f"--reference {reference}: mu has D={ref.dim} but the offline classifier's "
                     f"features have D={feature_dim} (an Inception file is only for fid)")
  return ref
