"""What a model is evaluated as, and the tokenizer's reconstruction metrics.

A model class says what it is with a class attribute `evaluation` (absent: 'generator'), which
picks its default evaluators and the evaluators it accepts (arjax.train.evaluators, registry
`EVALUATORS`):

  generator  test bits/dim and a class-conditional sample grid.
  text       a generator over a text tokenizer: test (validation) bits/char, which is the
             bits/dim of a character token, and text samples written to a file.
  tokenizer  reconstructions of the test split (`tokenizer_metrics` here): PSNR, SSIM, codebook
             usage and perplexity (discrete tokens); VTBench-style detail measures (edge F1,
             high-band PSNR and energy ratio, PSNR/SSIM on the most detailed quarter of the
             images); on bundled 28x28 data, reconstruction Fréchet distance in the offline
             classifier's feature space and the classifier's error reading the reconstructed
             digits (VTBench's text preservation, with a digit classifier for the OCR); and a
             PNG grid of originals (odd rows) over reconstructions (even rows).

Legend: B batch, H/W image size, C channels, N tokens per image, K codebook size.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import jax
import numpy as np

GRID_COLUMNS = 8  # reconstruction grid: 2 rows of originals and 2 of reconstructions.
_log = logging.getLogger("arjax.train")


def evaluation_kind(model) -> str:
  """The model's `evaluation`; a generator over a text tokenizer ('char', 'sequence':
  `tokenizer.is_text`) is evaluated as 'text' (bits/char and text samples)."""
  kind = getattr(model, "evaluation", "generator")
  if kind == "generator" and getattr(getattr(model, "tokenizer", None), "is_text", False):
    return "text"
  return kind


def reconstruct_split(exp, params, split: str = "test", num_examples: int = -1
                      ) -> Dict[str, np.ndarray]:
  """Runs the autoencoder over a split (in order). Returns uint8 'images' and 'reconstructions'
  [M, H, W, C], 'tokens' [M, N(, D)] and int 'labels' [M] (-1 where the data has none) of the
  first `num_examples` examples (-1: all)."""
  from arjax import data as data_lib
  e = exp.config.eval
  fm = exp.fm
  run = exp.cached("reconstruct",
                   lambda: jax.jit(lambda p, images: fm.bind(p).reconstruct(images)))
  it = data_lib.make_iterator(exp.config.data, split=split, global_batch_size=e.batch_size,
                              seed=0, shuffle=False, num_epochs=1, drop_remainder=False)
  out = {"images": [], "reconstructions": [], "tokens": [], "labels": []}
  seen = 0
  for batch in it:
    if 0 <= num_examples <= seen:
      break
    images = batch["image"]
    rec, tokens = jax.device_get(run(params, exp.to_global({"image": images})["image"]))
    keep = batch["mask"] > 0 if "mask" in batch else np.ones(len(images), bool)
    if num_examples >= 0:
      keep &= seen + np.arange(len(images)) < num_examples
    seen += int(keep.sum())
    labels = batch.get("label", np.full(len(images), -1))
    for key, value in (("images", images), ("reconstructions", rec), ("tokens", tokens),
                       ("labels", labels)):
      out[key].append(np.asarray(value)[keep])
  return {k: np.concatenate(v) for k, v in out.items()}


def codebook_statistics(tokens: np.ndarray, vocab_size: int) -> Dict[str, float]:
  """Usage (fraction of the K codes that occur) and perplexity exp(H) of the code frequencies
  over all tokens of a split."""
  counts = np.bincount(tokens.reshape(-1), minlength=vocab_size).astype(np.float64)
  p = counts / max(counts.sum(), 1.0)
  nz = p[p > 0]
  return {"codebook_usage": float(np.mean(counts > 0)),
          "perplexity": float(np.exp(-np.sum(nz * np.log(nz))))}


def _offline_evaluator(data_source: str, images: np.ndarray):
  """The offline classifier of bundled 28x28 data, or None for other data."""
  from arjax.data.idx import BUNDLED
  if data_source not in BUNDLED or images.shape[1:] != (28, 28, 1):
    return None
  from arjax.evaluate.offline import OfflineEvaluator
  return OfflineEvaluator(data_source)


def reconstruction_fd(ev, images: np.ndarray, reconstructions: np.ndarray) -> Optional[float]:
  """FD between the offline classifier `ev`'s features of reconstructions and of the
  originals; None with more feature dimensions than examples (a rank-deficient covariance)."""
  from arjax.evaluate import metrics
  if len(images) <= ev.feature_dim:
    _log.info("reconstruction FD skipped: %d examples <= %d feature dimensions", len(images),
              ev.feature_dim)
    return None
  return metrics.frechet_distance_from_features(ev.features(reconstructions), ev.features(images))


def recognition_error(ev, images: np.ndarray, reconstructions: np.ndarray, labels: np.ndarray
                      ) -> Dict[str, float]:
  """VTBench's text preservation with a digit classifier for the OCR: the fraction of
  reconstructions the offline classifier `ev` reads as another class than the label, next to
  its error on the originals (the recogniser's own floor) and the fraction whose reading
  changed between original and reconstruction."""
  if np.any(labels < 0):
    raise ValueError("recognition_error: the data has no labels for some images")
  on_rec, on_orig = ev.predict(reconstructions), ev.predict(images)
  return {"recognition_error": float(np.mean(on_rec != labels)),
          "recognition_error_originals": float(np.mean(on_orig != labels)),
          "recognition_changed": float(np.mean(on_rec != on_orig))}


def tokenizer_metrics(exp, params, split: str = "test", num_examples: int = -1
                      ) -> Dict[str, Any]:
  """PSNR, SSIM (means over images), codebook usage/perplexity, the detail measures,
  reconstruction FD and recognition error (bundled 28x28 data), plus the arrays (for grids)."""
  from arjax.evaluate.tokenizer_metrics import detail_metrics, psnr, ssim
  r = reconstruct_split(exp, params, split, num_examples)
  values: Dict[str, Any] = {
      "psnr": float(np.mean(np.minimum(psnr(r["images"], r["reconstructions"]), 100.0))),
      "ssim": float(np.mean(ssim(r["images"], r["reconstructions"]))),
      "num_examples": int(len(r["images"]))}
  vocab = int(getattr(exp.abstract_model, "vocab_size", 0))
  if vocab:
    values.update(codebook_statistics(r["tokens"], vocab))
  values.update(detail_metrics(r["images"], r["reconstructions"]))
  ev = _offline_evaluator(exp.config.data.source, r["images"])
  if ev is not None:
    fd = reconstruction_fd(ev, r["images"], r["reconstructions"])
    if fd is not None:
      values["reconstruction_fd"] = fd
    values.update(recognition_error(ev, r["images"], r["reconstructions"], r["labels"]))
  return values, r


def reconstruction_grid(images: np.ndarray, reconstructions: np.ndarray,
                        ncol: int = GRID_COLUMNS) -> np.ndarray:
  """uint8 [2k, H, W, C]: rows of `ncol` originals, each followed by their reconstructions."""
  n = min(len(images), 2 * ncol)
  n -= n % ncol if n >= ncol else 0
  rows = []
  for start in range(0, max(n, 1), ncol):
    rows += [images[start:start + ncol], reconstructions[start:start + ncol]]
  return np.concatenate(rows)
