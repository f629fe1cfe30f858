"""Trains the offline evaluator's classifier and writes its vendored weights.

  python experiments/build_evaluator.py --config configs/evaluators/classifier.py:dataset=mnist \
      --out arjax/evaluate/weights/mnist_classifier.msgpack
  python experiments/build_evaluator.py \
      --config configs/evaluators/classifier.py:dataset=fashion_mnist \
      --out arjax/evaluate/weights/fashion_mnist_classifier.msgpack

Prints the loss while training, then the accuracy on the 10k test split, and stores it (with
the config) in the file's metadata. See configs/evaluators/classifier.py for the accuracies
and times to expect.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="config file, optionally with :arguments")
  p.add_argument("--out", required=True, help="output .msgpack path")
  args = p.parse_args(argv)

  from arjax.config import load_config
  from arjax.data.idx import load_bundled
  from arjax.evaluate import classifier as classifier_lib

  config = load_config(args.config)
  print(config, flush=True)
  t0 = time.time()
  model = classifier_lib.train_classifier(config.dataset, steps=config.steps, seed=config.seed,
                                          batch_size=config.batch_size, lr=config.lr)
  train_s = time.time() - t0
  images, labels = load_bundled(config.dataset, "test")
  acc = classifier_lib.accuracy(model, images, labels)
  meta = {"dataset": config.dataset, "test_accuracy": acc, "train_seconds": round(train_s, 1),
          "config": config.to_dict(),
          "params": classifier_lib.num_params(model)}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  classifier_lib.save_classifier(model, args.out, meta)
  print(json.dumps({"dataset": config.dataset, "test_accuracy": round(acc, 4),
                    "train_seconds": round(train_s, 1), "params": meta["params"],
                    "out": args.out, "bytes": os.path.getsize(args.out)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
