"""python -m arjax.evaluate.reference --data mnist --split train --features offline|inception
       [--inception_weights FILE] [--size S] [--levels L] [--out stats.npz]

Writes reference statistics (mu, sigma, and arr_0 = the per-image features for
precision/recall) of a bundled data set in the ADM .npz layout (reference_stats.py).
`--size/--levels` first pass the images through what a pixel tokenizer sees (area resize,
grey-level quantisation), as `arjax.evaluate --metrics fd` does for its own reference.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

import numpy as np


def reference_features(data: str, split: str, features: str = "offline",
                       inception_weights: Optional[str] = None, size: Optional[int] = None,
                       levels: Optional[int] = None, images: Optional[np.ndarray] = None):
  """float64 features [M, F] of a bundled split (or of `images`, uint8 [M, 28, 28, 1])."""
  from arjax.data.idx import load_bundled
  from arjax.data.preprocess import quantize_table, resize_images
  from arjax.evaluate.sample_metrics import to_28
  if features not in ("offline", "inception"):
    raise ValueError(f"--features {features!r}; expected 'offline' or 'inception'")
  if images is None:
    images, _ = load_bundled(data, split)
  if size:
    images = resize_images(images, (size, size), "area")
  if levels:
    images = quantize_table(levels)[images]
  if features == "offline":
    from arjax.evaluate.offline import OfflineEvaluator
    return OfflineEvaluator(data).features(to_28(images))
  import os
  from arjax.evaluate import inception
  if not inception_weights or not os.path.isfile(inception_weights):
    raise FileNotFoundError(f"--features inception needs --inception_weights FILE; "
                            f"{inception_weights!r} not found")
  return inception.make_extractor(inception.load_inception(inception_weights))(
      images)["pool3"].astype(np.float64)


def write_reference(out: str, feats: np.ndarray) -> dict:
  from arjax.evaluate import metrics
  from arjax.evaluate.reference_stats import save_reference_stats
  mu, sigma = metrics.feature_statistics(feats)
  save_reference_stats(out, mu, sigma, arr_0=feats.astype(np.float32))
  return {"out": out, "num": int(feats.shape[0]), "dim": int(feats.shape[1])}


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m arjax.evaluate.reference", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", required=True)
  p.add_argument("--split", default="train")
  p.add_argument("--features", default="offline", choices=["offline", "inception"])
  p.add_argument("--inception_weights", default=None)
  p.add_argument("--size", type=int, default=None)
  p.add_argument("--levels", type=int, default=None)
  p.add_argument("--out", required=True)
  a = p.parse_args(argv)
  try:
    feats = reference_features(a.data, a.split, a.features, a.inception_weights, a.size, a.levels)
  except (KeyError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(write_reference(a.out, feats)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
