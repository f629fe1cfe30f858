"""Batched preprocessing ops, parsed from a big_vision-style string such as "resize(16)|flip_lr".

Shapes: B batch, H/W height/width, C channels. Every op works on a whole batch
{"image": uint8 [B, H, W, C], "label": int32 [B], ...} at once (numpy, vectorised), because
the default run (MNIST on a 2-core CPU) cannot afford per-example Python work.

Ops are looked up by name in `PP_OPS`; each registered builder takes the arguments written
in the string and returns either a `MapOp` (changes the examples of a batch) or a
`FilterOp` (decides up front, from the labels, which examples the split contains; filters
apply to the whole split whatever their place in the string, so the number of examples is
known before the first batch and epochs stay exact).

Randomness is per example and deterministic: the pipeline gives every example a 64-bit seed
derived from (data seed, position of the example in the global stream), and each op mixes
in its own place in the pp string. An example therefore gets the same flip whatever the
batch size, the number of processes or the worker count, and a resumed run repeats it.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

from arjax.registry import Registry

Batch = Dict[str, np.ndarray]
PP_OPS: Registry = Registry("preprocessing op")


@dataclasses.dataclass(frozen=True)
class MapOp:
  """Transforms a batch; `fn(batch, seeds)` gets uint64 [B] per-example seeds."""
  name: str
  fn: Callable[[Batch, np.ndarray], Batch]


@dataclasses.dataclass(frozen=True)
class FilterOp:
  """Keeps the examples whose label passes: `keep(labels int32 [N]) -> bool [N]`."""
  name: str
  keep: Callable[[np.ndarray], np.ndarray]


# -- deterministic per-example randomness ----------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64 finaliser: a cheap, well-mixed bijection on uint64 (wraps by design)."""
  x = np.asarray(x, np.uint64) + _GOLDEN
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def example_seeds(seed: int, positions: np.ndarray) -> np.ndarray:
  """uint64 [B] seeds for the examples at `positions` of the global stream of data seed `seed`."""
  key = _splitmix64(np.array([seed % 2**64], np.uint64))
  return _splitmix64(key ^ np.asarray(positions, np.uint64))


def op_seeds(seeds: np.ndarray, salt: int) -> np.ndarray:
  """Independent seeds for the op at place `salt` of the pp string."""
  return _splitmix64(seeds ^ _splitmix64(np.array([salt], np.uint64)))


def uniform(seeds: np.ndarray, draw: int = 0) -> np.ndarray:
  """float64 [B] in [0, 1): the `draw`-th uniform number of each example's seed."""
  bits = _splitmix64(seeds + np.array([draw], np.uint64) * _GOLDEN)  # arrays wrap silently
  return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


# -- parsing ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Preprocess:
  """A parsed pp string: filters over the split's labels, then map ops over each batch."""
  spec: str
  filters: Tuple[FilterOp, ...]
  maps: Tuple[Tuple[int, MapOp], ...]   # (place in the string, op): the place salts the RNG.

  def keep(self, labels: np.ndarray) -> np.ndarray:
    keep = np.ones(len(labels), bool)
    for f in self.filters:
      keep &= np.asarray(f.keep(labels), bool)
    return keep

  def __call__(self, batch: Batch, seeds: np.ndarray) -> Batch:
    for salt, op in self.maps:
      batch = op.fn(dict(batch), op_seeds(seeds, salt))
    return batch

  def __repr__(self) -> str:
    return f"Preprocess({self.spec!r})"


def _parse_op(text: str, field: str) -> Tuple[str, List[Any], Dict[str, Any]]:
  try:
    node = ast.parse(text, mode="eval").body
    if isinstance(node, ast.Name):
      return node.id, [], {}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      args = [ast.literal_eval(a) for a in node.args]
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
      return node.func.id, args, kwargs
  except (SyntaxError, ValueError) as e:
    raise ValueError(f"{field}: cannot parse op {text!r} ({e}); expected name or "
                     "name(literal args), e.g. 'resize(16)'") from None
  raise ValueError(f"{field}: cannot parse op {text!r}; expected name or name(literal args), "
                   "e.g. 'resize(16)'")


@functools.lru_cache(maxsize=64)
def parse(pp: str, field: str = "data.pp") -> Preprocess:
  """Parses "op1(args)|op2|..." into a `Preprocess`; unknown ops list the known ones."""
  filters, maps = [], []
  for place, text in enumerate(t.strip() for t in pp.split("|")):
    if not text:
      continue
    name, args, kwargs = _parse_op(text, field)
    builder = PP_OPS.get(name, field=field)
    try:
      op = builder(*args, **kwargs)
    except (TypeError, ValueError) as e:
      raise ValueError(f"{field}: op {text!r}: {e}") from None
    if isinstance(op, FilterOp):
      filters.append(op)
    else:
      maps.append((place, op))
  return Preprocess(pp, tuple(filters), tuple(maps))


# -- ops -------------------------------------------------------------------------------------
def _image(batch: Batch, op: str) -> np.ndarray:
  image = batch.get("image")
  if image is None:
    raise ValueError(f"pp op {op!r} needs an 'image' in the examples; found keys {sorted(batch)}")
  if image.dtype != np.uint8 or image.ndim != 4:
    raise ValueError(f"pp op {op!r} expects image uint8 [B, H, W, C]; got {image.dtype} "
                     f"{list(image.shape)}")
  return image


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in]: the fraction of each output cell covered by each input cell."""
  scale = n_in / n_out
  lo = np.arange(n_out)[:, None] * scale
  src = np.arange(n_in)[None, :]
  overlap = np.clip(np.minimum(lo + scale, src + 1) - np.maximum(lo, src), 0.0, None)
  return overlap / scale


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in]: linear interpolation at half-pixel centres (as jax.image.resize 'linear')."""
  x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  left = np.floor(x).astype(int)
  right = np.minimum(left + 1, n_in - 1)
  frac = x - left
  w = np.zeros((n_out, n_in))
  np.add.at(w, (np.arange(n_out), left), 1.0 - frac)
  np.add.at(w, (np.arange(n_out), right), frac)
  return w


_RESIZE_WEIGHTS = {"area": _area_weights, "bilinear": _bilinear_weights}


@functools.lru_cache(maxsize=64)
def resize_weights(n_in: int, n_out: int, method: str) -> np.ndarray:
  """float32 [n_out, n_in] row-stochastic resampling matrix of one image axis."""
  return _RESIZE_WEIGHTS[method](n_in, n_out).astype(np.float32)


def resize_images(image: np.ndarray, size: Tuple[int, int], method: str) -> np.ndarray:
  """uint8 [B, H, W, C] -> uint8 [B, h, w, C], separable, rounded half up.

  Each output is a convex combination of inputs (weights >= 0, summing to 1), so values stay
  in 0..255 without clipping; a constant image stays exactly constant.
  """
  b, h_in, w_in, c = image.shape
  h, w = size
  if (h, w) == (h_in, w_in):
    return image
  x = image.astype(np.float32)
  x = resize_weights(h_in, h, method) @ x.reshape(b, h_in, w_in * c)          # [B, h, W*C]
  x = x.reshape(b, h, w_in, c).transpose(0, 1, 3, 2)                           # [B, h, C, W]
  x = (x @ resize_weights(w_in, w, method).T).transpose(0, 1, 3, 2)           # [B, h, w, C]
  return np.floor(x + 0.5).astype(np.uint8)


@PP_OPS.register("resize")
def resize(size, method: str = "area") -> MapOp:
  """resize(size[, method]): size int (square) or (h, w); method 'area' (box average; exact
  block means for integer factors, like the pixel tokenizer) or 'bilinear'. uint8 -> uint8."""
  hw = (size, size) if isinstance(size, int) else tuple(size)
  if len(hw) != 2 or not all(isinstance(s, int) and s > 0 for s in hw):
    raise ValueError(f"size={size!r}; expected a positive int or (h, w)")
  if method not in _RESIZE_WEIGHTS:
    raise ValueError(f"method={method!r}; expected one of {sorted(_RESIZE_WEIGHTS)}")

  def fn(batch, seeds):
    batch["image"] = resize_images(_image(batch, "resize"), hw, method)
    return batch
  return MapOp("resize", fn)


def quantize_table(levels: int) -> np.ndarray:
  """uint8 [256] lookup: value -> centre of its bucket among `levels` equal buckets.

  Bucket t = floor(v * levels / 256), as the pixel tokenizer computes it; the centre is the
  middle of the uint8 values in that bucket, halves rounded up (within 1 of, and for
  levels dividing 256 equal to, the tokenizer's decoded (t + 0.5) * 256 / levels), so
  quantising twice changes nothing and re-tokenising gives the same t.
  """
  t = np.arange(levels)
  lo = -(-t * 256 // levels)                  # ceil(t * 256 / levels)
  hi = -(-(t + 1) * 256 // levels) - 1
  centres = (lo + hi + 1) // 2               # Halves round up, as (t + 0.5) * 256 / levels.
  return centres[np.arange(256) * levels // 256].astype(np.uint8)


@PP_OPS.register("quantize")
def quantize(levels: int) -> MapOp:
  """quantize(levels): uint8 -> uint8 bucket centres (a preview of what the tokenizer sees)."""
  if not isinstance(levels, int) or not 2 <= levels <= 256:
    raise ValueError(f"levels={levels!r}; expected an int in 2..256")
  table = quantize_table(levels)

  def fn(batch, seeds):
    batch["image"] = table[_image(batch, "quantize")]
    return batch
  return MapOp("quantize", fn)


@PP_OPS.register("flip_lr")
def flip_lr(p: float = 0.5) -> MapOp:
  """flip_lr[(p)]: mirrors each image left-right with probability p (per-example seed)."""
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"p={p!r}; expected a probability in [0, 1]")

  def fn(batch, seeds):
    image = _image(batch, "flip_lr")
    flip = uniform(seeds) < p
    batch["image"] = np.where(flip[:, None, None, None], image[:, :, ::-1], image)
    return batch
  return MapOp("flip_lr", fn)


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)   # ITU-R BT.601, as PIL's "L" mode.


@PP_OPS.register("to_gray")
def to_gray() -> MapOp:
  """to_gray: C=3 -> C=1 by BT.601 luma (rounded); C=1 passes through."""
  def fn(batch, seeds):
    image = _image(batch, "to_gray")
    if image.shape[-1] == 1:
      return batch
    if image.shape[-1] != 3:
      raise ValueError(f"pp op 'to_gray' expects 1 or 3 channels; got image {list(image.shape)}")
    batch["image"] = np.floor(image @ _LUMA + 0.5).astype(np.uint8)[..., None]
    return batch
  return MapOp("to_gray", fn)


@PP_OPS.register("to_rgb")
def to_rgb() -> MapOp:
  """to_rgb: C=1 -> C=3 by repeating the grey channel; C=3 passes through."""
  def fn(batch, seeds):
    image = _image(batch, "to_rgb")
    if image.shape[-1] == 3:
      return batch
    if image.shape[-1] != 1:
      raise ValueError(f"pp op 'to_rgb' expects 1 or 3 channels; got image {list(image.shape)}")
    batch["image"] = np.repeat(image, 3, axis=-1)
    return batch
  return MapOp("to_rgb", fn)


@PP_OPS.register("keep_classes")
def keep_classes(*classes: int) -> FilterOp:
  """keep_classes(c0, c1, ...): the split keeps only examples with these labels (original
  label values, not renumbered, so the model's class ids still match the data set's)."""
  if not classes or not all(isinstance(c, int) for c in classes):
    raise ValueError(f"classes={classes!r}; expected one or more int labels")
  wanted = np.array(sorted(set(classes)), np.int64)
  return FilterOp("keep_classes", lambda labels: np.isin(labels, wanted))


def known_ops() -> Sequence[str]:
  return PP_OPS.names()
