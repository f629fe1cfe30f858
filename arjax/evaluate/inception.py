"""InceptionV3 as used for FID, sFID and IS, in Flax NNX, loading `pt_inception-2015-12-05`.

FID numbers are only comparable when computed with one network: the 2015-12-05 TensorFlow
Inception graph that Heusel et al. 2017 ("GANs Trained by a Two Time-Scale Update Rule
Converge to a Local Nash Equilibrium") used, and that the ADM evaluation suite (Dhariwal &
Nichol 2021) still runs. pytorch-fid ported its weights into torchvision's InceptionV3 layout
(`pt_inception-2015-12-05-6726825d.pth`, fc with 1008 classes, no auxiliary head) and changed
the blocks where the TF graph differs from torchvision: average pools exclude padding from the
count (TF 'SAME' pooling), and the last block (Mixed_7c) max-pools its pool branch. This module
rebuilds that network; with those weights its outputs are the TF graph's up to float32
round-off (the layer mapping follows pytorch-fid and torch-fidelity's converter; no weights
could be downloaded where this was written, so it is checked on shapes, parameter count,
pooling and resizing rules, not on reference activations):

  pool3            [B, 2048]  'pool_3:0', the FID features (Heusel et al. 2017).
  spatial          [B, 2023]  'mixed_6/conv:0' (the 1x1 branch of Mixed_6d, after its ReLU),
                              first 7 channels of the 17x17 map flattened in (H, W, C) order:
                              the sFID features of Nash et al. 2021 / the ADM suite.
  logits           [B, 1008]  pool3 @ W + b.
  logits_unbiased  [B, 1008]  pool3 @ W, what the original Inception Score code
                              (Salimans et al. 2016) and the ADM suite feed to the softmax.

Parameter count: 23,850,960 (conv weights and BatchNorm scale/offset; BatchNorm running means
and variances are not parameters). Check: torchvision documents 27,161,264 for inception_v3
with its auxiliary head and 1000 classes; the auxiliary head is 3,326,696 (1x1 conv 768->128,
5x5 conv 128->768, their BatchNorms, fc 768->1000), and 8 more classes add 8 * 2049 = 16,392.

Input preprocessing ("tf1", the default) reproduces the graph: images as float 0..255,
bilinear resize to 299x299 the way TF1's ResizeBilinear does it (align_corners=False without
half-pixel centres: source = dest * in/out), then (x - 128) / 128. "pytorch_fid" instead
matches pytorch-fid's F.interpolate(bilinear, align_corners=False) (half-pixel centres) and
2 * x/255 - 1, so its FIDs differ slightly from the TF graph's (as pytorch-fid's README
warns); use it only to reproduce numbers computed with pytorch-fid.

Weights: not bundled (24M float32 values, ~95 MB). Pass the path of pytorch-fid's
  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
which is read without torch (a restricted unpickler that only rebuilds tensors: torch's zip
format and the legacy format), or an .npz with the same state-dict keys, e.g. made with
  python -c "import torch, numpy as np; sd = torch.load('pt_inception-2015-12-05-6726825d.pth', map_location='cpu'); np.savez('pt_inception-2015-12-05.npz', **{k: v.numpy() for k, v in sd.items()})"

Shape legend: B batch, H/W height/width, C channels.
"""
from __future__ import annotations

import collections
import functools
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               + WEIGHTS_NAME)
NUM_CLASSES = 1008
NUM_PARAMS = 23_850_960
SPATIAL_CHANNELS = 7      # sFID keeps the first 7 of mixed_6/conv's 192 channels (ADM suite).
INPUT_SIZE = 299

# Full precision on GPUs too: TF32 convolutions move pool3 features by ~1e-3 relative, enough
# to shift FID in the first decimal.
_PRECISION = jax.lax.Precision.HIGHEST


def _pair(v) -> Tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nnx.Module):
  """Conv (no bias) + BatchNorm (eps 1e-3, the TF graph's) + ReLU; torchvision's names."""

  def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0, *, rngs: nnx.Rngs):
    ph, pw = _pair(padding)
    self.conv = nnx.Conv(cin, cout, _pair(kernel), strides=_pair(stride),
                         padding=((ph, ph), (pw, pw)), use_bias=False, precision=_PRECISION,
                         rngs=rngs)
    self.bn = nnx.BatchNorm(cout, epsilon=1e-3, use_running_average=True, rngs=rngs)

  def __call__(self, x):
    return jax.nn.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x):
  # TF 'SAME' average pooling divides by the number of in-image pixels.
  return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                      count_include_pad=False)


def _max_pool_3x3(x):
  # Pads with -inf, as TF 'SAME' max pooling.
  return nnx.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x):
  return nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nnx.Module):
  """35x35 block (Mixed_5b..5d)."""

  def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
    c = functools.partial(BasicConv2d, rngs=rngs)
    self.branch1x1 = c(cin, 64, 1)
    self.branch5x5_1 = c(cin, 48, 1)
    self.branch5x5_2 = c(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = c(cin, 64, 1)
    self.branch3x3dbl_2 = c(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = c(96, 96, 3, padding=1)
    self.branch_pool = c(cin, pool_features, 1)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
  """35x35 -> 17x17 reduction (Mixed_6a)."""

  def __init__(self, cin: int, *, rngs: nnx.Rngs):
    c = functools.partial(BasicConv2d, rngs=rngs)
    self.branch3x3 = c(cin, 384, 3, stride=2)
    self.branch3x3dbl_1 = c(cin, 64, 1)
    self.branch3x3dbl_2 = c(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = c(96, 96, 3, stride=2)

  def __call__(self, x):
    b3 = self.branch3x3(x)
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nnx.Module):
  """17x17 block with factorised 7x7 convolutions (Mixed_6b..6e)."""

  def __init__(self, cin: int, c7: int, *, rngs: nnx.Rngs):
    c = functools.partial(BasicConv2d, rngs=rngs)
    self.branch1x1 = c(cin, 192, 1)
    self.branch7x7_1 = c(cin, c7, 1)
    self.branch7x7_2 = c(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = c(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = c(cin, c7, 1)
    self.branch7x7dbl_2 = c(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = c(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = c(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = c(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = c(cin, 192, 1)

  def __call__(self, x):
    """Returns (block output, the 1x1 branch: 'mixed_N/conv' in the TF graph)."""
    b1 = self.branch1x1(x)
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                  self.branch7x7dbl_4, self.branch7x7dbl_5):
      bd = layer(bd)
    bp = self.branch_pool(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1), b1


class InceptionD(nnx.Module):
  """17x17 -> 8x8 reduction (Mixed_7a)."""

  def __init__(self, cin: int, *, rngs: nnx.Rngs):
    c = functools.partial(BasicConv2d, rngs=rngs)
    self.branch3x3_1 = c(cin, 192, 1)
    self.branch3x3_2 = c(192, 320, 3, stride=2)
    self.branch7x7x3_1 = c(cin, 192, 1)
    self.branch7x7x3_2 = c(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = c(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = c(192, 192, 3, stride=2)

  def __call__(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nnx.Module):
  """8x8 block with expanded filter banks (Mixed_7b, Mixed_7c).

  `pool="avg"` for Mixed_7b; the TF graph max-pools in Mixed_7c's pool branch (pytorch-fid's
  FIDInceptionE_2), a difference from torchvision that changes FID by several points.
  """

  def __init__(self, cin: int, pool: str, *, rngs: nnx.Rngs):
    c = functools.partial(BasicConv2d, rngs=rngs)
    self.pool = pool
    self.branch1x1 = c(cin, 320, 1)
    self.branch3x3_1 = c(cin, 384, 1)
    self.branch3x3_2a = c(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = c(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = c(cin, 448, 1)
    self.branch3x3dbl_2 = c(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = c(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = c(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = c(cin, 192, 1)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b3 = self.branch3x3_1(x)
    b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
    pooled = _max_pool_3x3(x) if self.pool == "max" else _avg_pool_3x3(x)
    return jnp.concatenate([b1, b3, bd, self.branch_pool(pooled)], axis=-1)


PREPROCESSING = ("tf1", "pytorch_fid")


def _check_mode(mode: str):
  if mode not in PREPROCESSING:
    raise ValueError(f"unknown preprocessing {mode!r}; expected one of {PREPROCESSING} "
                     "(bilinear resizing as TF1's graph or as pytorch-fid)")


def _resize_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
  """[n_out, n_in] linear-interpolation weights along one axis, computed in float32 as the
  reference kernels do, so the source coordinates round the same way."""
  _check_mode(mode)
  scale = np.float32(n_in) / np.float32(n_out)
  dst = np.arange(n_out, dtype=np.float32)
  if mode == "tf1":      # TF1 ResizeBilinear(align_corners=False, half_pixel_centers=False).
    src = dst * scale
  else:                  # torch F.interpolate(bilinear, align_corners=False), pytorch-fid.
    src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
  lo = np.floor(src).astype(np.int64)
  frac = (src - lo).astype(np.float32)
  lo = np.minimum(lo, n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  m = np.zeros((n_out, n_in), np.float32)
  np.add.at(m, (np.arange(n_out), lo), 1 - frac)
  np.add.at(m, (np.arange(n_out), hi), frac)
  return m


def preprocess(images: jax.Array, mode: str = "tf1", size: int = INPUT_SIZE) -> jax.Array:
  """Images -> the network's float32 input [B, size, size, 3] in about [-1, 1].

  Args:
    images: [B, H, W, C] with C = 1 (repeated to RGB) or 3; uint8 in 0..255, or float in
      [0, 1] (scaled by 255).
    mode: "tf1" (the TF graph, default) or "pytorch_fid"; see the module docstring.
    size: output side (299).
  """
  _check_mode(mode)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"inception: expected images [B, H, W, 1 or 3], got shape {images.shape}")
  x = images.astype(jnp.float32)
  if images.dtype != jnp.uint8:
    x = x * 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  _, h, w, _ = x.shape
  if (h, w) != (size, size):
    # Separable interpolation as two small matmuls: exact weights for both conventions, no
    # antialiasing (jax.image.resize antialiases when downsampling, the references do not).
    ry = jnp.asarray(_resize_matrix(h, size, mode))
    rx = jnp.asarray(_resize_matrix(w, size, mode))
    x = jnp.einsum("oh,bhwc->bowc", ry, x, precision=_PRECISION)
    x = jnp.einsum("pw,bowc->bopc", rx, x, precision=_PRECISION)
  if mode == "tf1":
    return (x - 128.0) / 128.0
  return x / 127.5 - 1.0


class InceptionV3(nnx.Module):
  """pytorch-fid's FID InceptionV3 (TF 2015-12-05 graph) in NNX; see the module docstring."""

  def __init__(self, *, rngs: Optional[nnx.Rngs] = None, preprocessing: str = "tf1"):
    rngs = rngs or nnx.Rngs(0)
    c = functools.partial(BasicConv2d, rngs=rngs)
    _check_mode(preprocessing)
    self.preprocessing = preprocessing
    self.Conv2d_1a_3x3 = c(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = c(32, 32, 3)
    self.Conv2d_2b_3x3 = c(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = c(64, 80, 1)
    self.Conv2d_4a_3x3 = c(80, 192, 3)
    self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = InceptionE(1280, "avg", rngs=rngs)
    self.Mixed_7c = InceptionE(2048, "max", rngs=rngs)
    self.fc = nnx.Linear(2048, NUM_CLASSES, precision=_PRECISION, rngs=rngs)

  def __call__(self, images: jax.Array) -> Dict[str, jax.Array]:
    """images [B, H, W, 1|3] (uint8, or float in [0, 1]) -> dict of pool3 [B, 2048],
    spatial [B, 2023], logits [B, 1008], logits_unbiased [B, 1008]."""
    x = preprocess(images, self.preprocessing)
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))   # [B, 147, 147, 64]
    x = _max_pool_3x3_s2(x)                                             # [B, 73, 73, 64]
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                       # [B, 71, 71, 192]
    x = _max_pool_3x3_s2(x)                                             # [B, 35, 35, 192]
    x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))                  # [B, 35, 35, 288]
    x = self.Mixed_6a(x)                                                # [B, 17, 17, 768]
    x, _ = self.Mixed_6b(x)
    x, _ = self.Mixed_6c(x)
    x, mixed_6_conv = self.Mixed_6d(x)                                  # [B, 17, 17, 192]
    x, _ = self.Mixed_6e(x)
    x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))                  # [B, 8, 8, 2048]
    pool3 = x.mean(axis=(1, 2))
    spatial = mixed_6_conv[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
    unbiased = jnp.dot(pool3, self.fc.kernel[...], precision=_PRECISION)
    return {"pool3": pool3, "spatial": spatial, "logits": unbiased + self.fc.bias[...],
            "logits_unbiased": unbiased}


def num_params(model: nnx.Module) -> int:
  """Number of trainable parameters (nnx.Param leaves), BatchNorm statistics excluded."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ----------------------------------------------------------------------------- weight layout

def _flatten(tree, prefix=()) -> Dict[Tuple[str, ...], Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (str(k),)))
    return out
  return {prefix: tree}


# NNX leaf name -> (state-dict suffix, how a torch array becomes the NNX array).
_LEAF_TO_TORCH = {
    ("conv", "kernel"): ("weight", lambda a: np.transpose(a, (2, 3, 1, 0))),  # OIHW -> HWIO
    ("bn", "scale"): ("weight", None),
    ("bn", "bias"): ("bias", None),
    ("bn", "mean"): ("running_mean", None),
    ("bn", "var"): ("running_var", None),
    ("fc", "kernel"): ("weight", lambda a: np.transpose(a)),  # [1008, 2048] -> [2048, 1008]
    ("fc", "bias"): ("bias", None),
}


def _torch_key(path: Tuple[str, ...]) -> Tuple[str, Any]:
  suffix, convert = _LEAF_TO_TORCH[path[-2:]]
  return ".".join(path[:-1] + (suffix,)), convert


def state_dict_shapes(model: Optional[InceptionV3] = None) -> Dict[str, Tuple[int, ...]]:
  """The pt_inception state-dict layout: key -> torch shape (OIHW convs, [out, in] fc)."""
  if model is None:
    return dict(_default_shapes())
  out = {}
  for path, leaf in _flatten(nnx.to_pure_dict(nnx.state(model))).items():
    key, convert = _torch_key(path)
    shape = tuple(leaf.shape)
    if convert is not None:   # both conversions are transposes; invert on the shape.
      shape = tuple(shape[i] for i in ((3, 2, 0, 1) if len(shape) == 4 else (1, 0)))
    out[key] = shape
  return out


@functools.lru_cache(maxsize=1)
def _default_shapes() -> Dict[str, Tuple[int, ...]]:
  # Tracing the 94 layers takes a few seconds on a CPU: do it once per process.
  return state_dict_shapes(nnx.eval_shape(lambda: InceptionV3()))


# Keys a PyTorch state dict may carry that the network does not need (BatchNorm's step
# counter, present in files saved by torch >= 0.4.1).
_IGNORED_SUFFIXES = (".num_batches_tracked",)


def check_layout(state_dict: Dict[str, np.ndarray], expected: Dict[str, Tuple[int, ...]],
                 source: str = "state dict") -> Dict[str, np.ndarray]:
  """Returns the state dict without ignorable keys, or raises one error naming every
  missing, unexpected and mis-shaped key."""
  given = {k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIXES)}
  missing = sorted(set(expected) - set(given))
  unexpected = sorted(set(given) - set(expected))
  misshaped = sorted(f"{k}: expected {expected[k]}, got {tuple(np.shape(given[k]))}"
                     for k in set(expected) & set(given)
                     if tuple(np.shape(given[k])) != expected[k])
  if missing or unexpected or misshaped:
    parts = []
    if missing:
      parts.append(f"{len(missing)} missing keys: {missing}")
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected keys: {unexpected}")
    if misshaped:
      parts.append(f"{len(misshaped)} mis-shaped keys: {misshaped}")
    raise ValueError(f"{source} does not have the pt_inception-2015-12-05 layout "
                     f"(pytorch-fid's FID InceptionV3): " + "; ".join(parts))
  return given


def load_state_dict(model: InceptionV3, state_dict: Dict[str, np.ndarray],
                    source: str = "state dict") -> InceptionV3:
  """Copies a pt_inception state dict into `model` (which may be abstract, from
  nnx.eval_shape); a layout mismatch is one error naming every offending key."""
  given = check_layout(state_dict, state_dict_shapes(model), source)
  new = {}
  for path in _flatten(nnx.to_pure_dict(nnx.state(model))):
    key, convert = _torch_key(path)
    arr = np.asarray(given[key], np.float32)
    if convert is not None:
      arr = np.ascontiguousarray(convert(arr))
    node = new
    for p in path[:-1]:
      node = node.setdefault(p, {})
    # device_put, not jnp.asarray: the latter compiles a copy per distinct shape (55 here).
    node[path[-1]] = jax.device_put(arr)
  state = nnx.state(model)
  nnx.replace_by_pure_dict(state, new)
  nnx.update(model, state)
  return model


def load_inception(path: str, preprocessing: str = "tf1") -> InceptionV3:
  """Builds the network and loads weights from a .pth (torch zip or legacy) or .npz file."""
  state_dict = read_state_dict(path)
  return from_state_dict(state_dict, preprocessing, source=path)


def from_state_dict(state_dict: Dict[str, np.ndarray], preprocessing: str = "tf1",
                    source: str = "state dict") -> InceptionV3:
  """Builds the network directly from a state dict. The skeleton comes from nnx.eval_shape:
  a random initialisation of 24M parameters would take about a minute on a CPU, only to be
  overwritten."""
  check_layout(state_dict, state_dict_shapes(), source)  # fail before building anything
  model = nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0), preprocessing=preprocessing))
  return load_state_dict(model, state_dict, source=source)


def make_extractor(model: InceptionV3, batch_size: int = 50):
  """Returns f(images [N, H, W, C]) -> dict of float32 numpy arrays, run in fixed-size jitted
  batches (the last one zero-padded so only one shape compiles)."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def apply(state, images):
    return nnx.merge(graphdef, state)(images)

  def extract(images: np.ndarray) -> Dict[str, np.ndarray]:
    images = np.asarray(images)
    n = images.shape[0]
    outs = collections.defaultdict(list)
    for i in range(0, n, batch_size):
      chunk = images[i:i + batch_size]
      m = chunk.shape[0]
      if m < batch_size:
        chunk = np.concatenate([chunk, np.zeros((batch_size - m,) + chunk.shape[1:],
                                                chunk.dtype)])
      for k, v in apply(state, chunk).items():
        outs[k].append(np.asarray(v)[:m])
    return {k: np.concatenate(v) for k, v in outs.items()}

  return extract


# ----------------------------------------------------------------------------- file reading

_MISSING_HELP = (
    "FID/sFID/IS need the InceptionV3 weights of pytorch-fid, {name} (~95 MB), from {url} . "
    "Download it on a machine with network access and pass its path (or an .npz of the same "
    "state dict; see arjax/evaluate/inception.py for a one-line conversion).")

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
  def __init__(self, name: str):
    if name not in _STORAGE_DTYPES:
      raise pickle.UnpicklingError(f"unsupported torch storage type torch.{name}")
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _StorageRef:
  """A storage whose bytes may come later in the file (legacy format)."""

  def __init__(self, dtype, key: str, numel: int, view=None):
    self.dtype, self.key, self.numel, self.view = dtype, key, numel, view


class _TensorRef:
  def __init__(self, storage: _StorageRef, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  return data


class _Namespace:
  """Stands in for argparse.Namespace (training checkpoints pickle their `args`): it only
  stores the attributes pickle sets, and nothing of it is read."""

  def __setstate__(self, state):
    self.__dict__.update(state if isinstance(state, dict) else {})


# The only globals a state-dict pickle may name. Anything else (in particular anything that
# could run code on load) is refused: this is torch.load(weights_only=True)'s policy.
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("argparse", "Namespace"): _Namespace,
}


class _StateDictUnpickler(pickle.Unpickler):

  def __init__(self, f, storage_factory=None):
    super().__init__(f)
    self._storage_factory = storage_factory

  def find_class(self, module, name):
    if (module, name) in _SAFE_GLOBALS:
      return _SAFE_GLOBALS[(module, name)]
    if module == "torch" and name.endswith("Storage"):
      return _StorageType(name)
    raise pickle.UnpicklingError(
        f"refusing to load global {module}.{name}: only tensors and dicts of tensors are read")

  def persistent_load(self, pid):
    if self._storage_factory is None:
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
    return self._storage_factory(pid)


def _resolve(obj, storages: Dict[str, np.ndarray]):
  if isinstance(obj, _TensorRef):
    st = obj.storage
    flat = storages[st.key]
    if st.view is not None:
      _, view_offset, view_size = st.view
      flat = flat[view_offset:view_offset + view_size]
    itemsize = flat.dtype.itemsize
    base = flat[obj.offset:]
    if not obj.size:
      return np.array(base[0])
    return np.lib.stride_tricks.as_strided(
        base, shape=obj.size, strides=tuple(s * itemsize for s in obj.stride)).copy()
  if isinstance(obj, dict):
    return {k: _resolve(v, storages) for k, v in obj.items()}
  return obj


def _read_zip(path: str):
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl")]
    if len(pkl) != 1:
      raise ValueError(f"{path}: a zip file without exactly one data.pkl (entries {names[:5]}...)")
    prefix = pkl[0][:-len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
      byteorder = zf.read(prefix + "byteorder").decode().strip()
    refs = {}

    def factory(pid):
      # ('storage', storage_type, key, location, numel)
      if pid[0] != "storage":
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
      ref = _StorageRef(pid[1].dtype, str(pid[2]), int(pid[4]))
      refs[ref.key] = ref
      return ref

    obj = _StateDictUnpickler(io.BytesIO(zf.read(pkl[0])), factory).load()
    storages = {}
    for key, ref in refs.items():
      dtype = ref.dtype.newbyteorder("<" if byteorder == "little" else ">")
      storages[key] = np.frombuffer(zf.read(f"{prefix}data/{key}"), dtype)[:ref.numel]
    return obj, storages


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _read_legacy(path: str):
  with open(path, "rb") as f:
    magic = _StateDictUnpickler(f).load()
    if magic != _LEGACY_MAGIC:
      raise ValueError(f"{path}: not a PyTorch file (no zip header, bad legacy magic number)")
    _StateDictUnpickler(f).load()  # protocol version
    _StateDictUnpickler(f).load()  # sys info (endianness, type sizes)
    refs = {}

    def factory(pid):
      if pid[0] == "module":
        return None
      # ('storage', storage_type, root_key, location, numel, view_metadata)
      _, storage_type, root_key, _, numel, view = pid
      key = str(root_key)
      ref = _StorageRef(storage_type.dtype, key, int(numel), view)
      refs.setdefault(key, ref)
      return ref

    obj = _StateDictUnpickler(f, factory).load()
    keys = _StateDictUnpickler(f).load()
    storages = {}
    for key in keys:
      key = str(key)
      (numel,) = struct.unpack("<q", f.read(8))
      dtype = refs[key].dtype.newbyteorder("<")
      data = f.read(numel * dtype.itemsize)
      storages[key] = np.frombuffer(data, dtype)
    return obj, storages


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads a PyTorch state dict (.pth/.pt, zip or legacy format) or an .npz into numpy arrays,
  without torch and without executing code from the file."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"InceptionV3 weights file {path!r} not found. "
                            + _MISSING_HELP.format(name=WEIGHTS_NAME, url=WEIGHTS_URL))
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  if zipfile.is_zipfile(path):
    obj, storages = _read_zip(path)
  else:
    obj, storages = _read_legacy(path)
  # Training checkpoints nest the weights: {"model": ..., "optimizer": ..., "args": ...}
  # (LlamaGen, VAR), {"state_dict": ...} or {"module": ...} (DeepSpeed).
  for key in ("state_dict", "model", "module"):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
      break
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), got "
                     f"{type(obj).__name__}")
  out = _resolve(obj, storages)
  return {k: v for k, v in out.items() if isinstance(v, np.ndarray)}
