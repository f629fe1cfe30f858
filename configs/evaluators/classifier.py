"""The offline evaluator's classifier (arjax.evaluate.classifier) on a bundled data set.

  python experiments/build_evaluator.py --config configs/evaluators/classifier.py:dataset=mnist \
      --out arjax/evaluate/weights/mnist_classifier.msgpack
  python experiments/build_evaluator.py \
      --config configs/evaluators/classifier.py:dataset=fashion_mnist \
      --out arjax/evaluate/weights/fashion_mnist_classifier.msgpack

Trains the 188k-parameter CNN with AdamW on the train split and prints the test accuracy:
MNIST 1000 steps of 128 -> 99.28 %, Fashion-MNIST 2000 steps -> 91.38 % (the vendored
weights, seed 0). On 2 idle CPU cores that is about 700 images/s, 3 and 6 minutes; the
vendored files took 6 and 13 minutes on a machine shared with other jobs. `:smoke` runs 20
steps of 32 to check the pipeline (accuracy far below these).
"""
from arjax.config import parse_arg

# Steps per data set: Fashion-MNIST needs about twice MNIST's to pass 90 %.
_STEPS = {"mnist": 1000, "fashion_mnist": 2000}


def get_config(arg=None):
  import ml_collections

  args = parse_arg(arg, dataset="mnist")
  if args.dataset not in _STEPS:
    raise ValueError(f"config argument dataset={args.dataset!r}: expected one of {sorted(_STEPS)}")
  c = ml_collections.ConfigDict()
  c.dataset = args.dataset          # bundled data set (arjax.data.idx.BUNDLED).
  c.steps = _STEPS[args.dataset]    # optimisation steps (one-cycle cosine schedule).
  c.batch_size = 128                # images per step.
  c.lr = 3e-3                       # peak AdamW learning rate.
  c.seed = 0                        # parameters, data order and shift augmentation.
  if args.smoke:
    c.steps = 20
    c.batch_size = 32
  return c
