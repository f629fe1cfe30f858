"""A small CNN for 28x28x1 images: the offline feature network for MNIST / Fashion-MNIST.

InceptionV3 features say little about 28x28 digits and its weights cannot be shipped, so the
bundled data sets are scored in the feature space of a classifier trained on them, as MNIST
generative-model papers commonly do with a LeNet-style network. The Fréchet distance and
precision/recall on these features use the formulas of Heusel et al. 2017 and Kynkäänniemi
et al. 2019 (arjax.evaluate.metrics); the numbers are not comparable with Inception FIDs. The
trained weights live in arjax/evaluate/weights/{dataset}_classifier.msgpack (built by
experiments/build_evaluator.py; test accuracy MNIST 99.28 %, Fashion-MNIST 91.38 %).

Architecture (188,234 parameters, 0.75 MB as float32 msgpack):
  [B,28,28,1] -> conv3x3 32, relu, maxpool2          -> [B,14,14,32]
              -> conv3x3 64, relu, maxpool2          -> [B,7,7,64]
              -> conv3x3 64, relu, maxpool2 (pad 8)  -> [B,4,4,64] -> flatten [B,1024]
              -> dense F, relu                       -> features [B,F]
              -> dense K                             -> logits [B,K]
Flattening a small 4x4 map (rather than global pooling) keeps position information, which
bought about 0.7 points of MNIST accuracy at equal training time; the features are the
post-ReLU penultimate layer, the usual choice for FD-style metrics.

Shape legend: B batch, F feature dimension (128), K classes (10).
"""
from __future__ import annotations

import functools
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax import serialization

FORMAT = "arjax.classifier.v1"


def _pool2(x: jax.Array) -> jax.Array:
  """2x2 max pool, stride 2, as reshape + max: XLA's CPU gradient of reduce_window max
  (select-and-scatter) is several times slower than the whole convolution stack."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _to_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] or float [0, 1] images -> float32 centred on 0 (in [-1, 1])."""
  if images.dtype == jnp.uint8:
    x = images.astype(jnp.float32) / 255.0
  else:
    x = images.astype(jnp.float32)
  return x * 2.0 - 1.0


class Classifier(nnx.Module):
  """CNN classifier with a `features` method for Fréchet-distance-style metrics."""

  def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 64, 64),
               feature_dim: int = 128, *, rngs: nnx.Rngs):
    w1, w2, w3 = widths
    self.num_classes = num_classes
    self.widths = tuple(widths)
    self.feature_dim = feature_dim
    conv = functools.partial(nnx.Conv, kernel_size=(3, 3), padding="SAME", rngs=rngs)
    self.conv1 = conv(1, w1)
    self.conv2 = conv(w1, w2)
    self.conv3 = conv(w2, w3)
    self.fc = nnx.Linear(4 * 4 * w3, feature_dim, rngs=rngs)
    self.head = nnx.Linear(feature_dim, num_classes, rngs=rngs)

  def features(self, images: jax.Array) -> jax.Array:
    """images uint8 [B, 28, 28, 1] (or float in [0, 1]) -> penultimate features [B, F]."""
    x = _to_float(images)
    x = _pool2(jax.nn.relu(self.conv1(x)))
    x = _pool2(jax.nn.relu(self.conv2(x)))
    x = jax.nn.relu(self.conv3(x))
    # 7x7 -> 4x4: zero-pad to 8x8 (activations are >= 0 after the ReLU, so zeros never win).
    x = _pool2(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))
    x = x.reshape(x.shape[0], -1)
    return jax.nn.relu(self.fc(x))

  def __call__(self, images: jax.Array) -> jax.Array:
    """images uint8 [B, 28, 28, 1] -> logits [B, K]."""
    return self.head(self.features(images))

  def features_and_logits(self, images: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Both outputs from one pass: ([B, F], [B, K])."""
    feats = self.features(images)
    return feats, self.head(feats)


def num_params(model: nnx.Module) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def save_classifier(model: Classifier, path: str, meta: Optional[Dict[str, Any]] = None):
  """Writes parameters and architecture to a .msgpack file (flax.serialization)."""
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  blob = {"format": FORMAT,
          "arch": {"num_classes": model.num_classes, "widths": list(model.widths),
                   "feature_dim": model.feature_dim},
          "meta": dict(meta or {}),
          "params": params}
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(blob))


def load_classifier(path: str) -> Tuple[Classifier, Dict[str, Any]]:
  """Reads a file written by `save_classifier`; returns (model, meta)."""
  try:
    with open(path, "rb") as f:
      blob = serialization.msgpack_restore(f.read())
  except FileNotFoundError:
    raise FileNotFoundError(
        f"classifier weights {path!r} not found; build them with "
        f"`python experiments/build_evaluator.py --config "
        f"configs/evaluators/classifier.py:dataset=NAME --out {path}`") from None
  if not isinstance(blob, dict) or blob.get("format") != FORMAT:
    raise ValueError(f"{path}: not an arjax classifier file (expected format {FORMAT!r})")
  arch = blob["arch"]
  model = Classifier(int(arch["num_classes"]), tuple(int(w) for w in arch["widths"]),
                     int(arch["feature_dim"]), rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  expected = {k: v.shape for k, v in _flat(nnx.to_pure_dict(state)).items()}
  got = {k: np.asarray(v).shape for k, v in _flat(blob["params"]).items()}
  bad = sorted(set(expected) ^ set(got)) + sorted(
      k for k in set(expected) & set(got) if expected[k] != got[k])
  if bad:
    raise ValueError(f"{path}: parameters do not match the architecture {arch}: {bad}")
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, blob["params"]))
  nnx.update(model, state)
  return model, dict(blob.get("meta", {}))


def _flat(tree, prefix=()) -> Dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, prefix + (str(k),)))
    return out
  return {"/".join(prefix): tree}


def make_apply(model: nnx.Module, method: str = "__call__"):
  """A jitted pure function images -> model.method(images) over the split model."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def apply(state, images):
    return getattr(nnx.merge(graphdef, state), method)(images)

  return lambda images: apply(state, images)


def batched(fn, images: np.ndarray, batch_size: int = 1000):
  """Applies fn to fixed-size batches (the last one zero-padded, so one compiled shape) and
  concatenates the outputs (an array or a tuple of arrays)."""
  n = images.shape[0]
  if n == 0:
    raise ValueError("batched: no images")
  outs = []
  for i in range(0, n, batch_size):
    chunk = images[i:i + batch_size]
    m = chunk.shape[0]
    if m < batch_size and n > batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - m,) + chunk.shape[1:], chunk.dtype)])
    outs.append(jax.tree.map(lambda a: np.asarray(a)[:m], fn(chunk)))
  return jax.tree.map(lambda *a: np.concatenate(a), *outs)


def accuracy(model: Classifier, images: np.ndarray, labels: np.ndarray,
             batch_size: int = 1000) -> float:
  logits = batched(make_apply(model), images, batch_size)
  return float((logits.argmax(-1) == labels).mean())


def train_classifier(dataset_name: str, steps: int = 1500, seed: int = 0, batch_size: int = 128,
                     lr: float = 3e-3, log_every: int = 250, verbose: bool = True) -> Classifier:
  """Trains a `Classifier` on a bundled data set's train split (Adam, one-cycle schedule).

  Augmentation is a random shift of up to 2 pixels (one shift per batch, a cheap crop of the
  zero-padded images): it keeps the features from keying on exact pixel positions, which
  generated digits do not reproduce.

  Args:
    dataset_name: 'mnist' or 'fashion_mnist' (arjax.data.idx.BUNDLED).
    steps: optimisation steps.
    seed: seeds initialisation, data order and augmentation.
    batch_size: images per step.
    lr: peak learning rate of the one-cycle schedule.
    log_every: steps between progress lines (when verbose).
    verbose: print loss and throughput.

  Returns:
    The trained model.
  """
  from arjax.data.idx import load_bundled, num_classes

  images, labels = load_bundled(dataset_name, "train")
  model = Classifier(num_classes(dataset_name), rngs=nnx.Rngs(seed))
  schedule = optax.cosine_onecycle_schedule(steps, lr, pct_start=0.15)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))
  graphdef, params = nnx.split(model, nnx.Param)
  opt_state = tx.init(params)

  def loss_fn(params, x, y):
    logits = nnx.merge(graphdef, params)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  order = rng.permutation(len(images))
  pos = 0
  t0 = time.time()
  for i in range(steps):
    if pos + batch_size > len(order):
      order, pos = rng.permutation(len(images)), 0
    idx = order[pos:pos + batch_size]
    pos += batch_size
    # Random shifts in [-2, 2]: crop a 28x28 window from the 32x32 zero-padded image.
    dy, dx = rng.integers(0, 5, size=2)
    x = padded[idx, dy:dy + 28, dx:dx + 28]
    params, opt_state, loss = step(params, opt_state, x, labels[idx])
    if verbose and ((i + 1) % log_every == 0 or i + 1 == steps):
      print(f"step {i + 1}/{steps}  loss {float(loss):.4f}  "
            f"{(i + 1) * batch_size / (time.time() - t0):.0f} img/s", flush=True)
  nnx.update(model, params)
  return model
