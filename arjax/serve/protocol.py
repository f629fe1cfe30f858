"""The body of POST /generate, checked field by field: a bad field is one `RequestError` naming it.

    {"labels": [3, 3, 7],      # class of each image, required: 1 ... max_images integers in [0, C)
     "seed": 0,                # int in [0, 2^31 - 1]; image j, token i draws with
                               #   fold_in(fold_in(key(seed), j), i)
     "temperature": 1.0,       # >= 0 (0: greedy)            default: the run's config.eval
     "top_k": 0,               # int >= 0 (0: off)           default: config.eval
     "top_p": 1.0,             # in (0, 1] (1: off)          default: config.eval
     "cfg_scale": 1.0,         # >= 0 (1: no guidance)       default: config.eval
     "format": "png"}          # 'png' (a grid, one row) or 'tokens'

Numbers must be JSON numbers (not strings or booleans), finite (Python's JSON reader accepts
NaN and Infinity, which are refused here); integers must be integers. Unknown fields are
refused, never ignored.

Legend: C classes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List

from arjax.serve.engine import MAX_SEED

FORMATS = ("png", "tokens")
FIELDS = ("labels", "seed", "temperature", "top_k", "top_p", "cfg_scale", "format")


class RequestError(ValueError):
  """A bad request: `field` names the offending field ('body' for the body as a whole)."""

  def __init__(self, field: str, message: str):
    super().__init__(message)
    self.field = field


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
  labels: List[int]
  seed: int = 0
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  cfg_scale: float = 1.0
  format: str = "png"


@dataclasses.dataclass(frozen=True)
class Limits:
  """What the served model and the server accept."""
  num_classes: int
  max_images: int
  guidance: bool          # whether cfg_scale != 1 can be served (a null class was trained).
  defaults: Dict[str, Any]  # temperature, top_k, top_p, cfg_scale when a request omits them.


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _int(body, field: str, default, lo: int, hi=None) -> int:
  x = body.get(field, default)
  if not _is_int(x):
    raise RequestError(field, f"{field}={x!r} ({type(x).__name__}); expected an integer")
  if x < lo or (hi is not None and x > hi):
    want = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
    raise RequestError(field, f"{field}={x}; expected an integer {want}")
  return int(x)


def _number(body, field: str, default) -> float:
  x = body.get(field, default)
  if not (_is_int(x) or isinstance(x, float)):
    raise RequestError(field, f"{field}={x!r} ({type(x).__name__}); expected a number")
  if not math.isfinite(x):
    raise RequestError(field, f"{field}={x}; expected a finite number")
  return float(x)


def parse_generate(body: Any, limits: Limits) -> GenerateRequest:
  """A decoded JSON body -> GenerateRequest, or RequestError naming the first bad field."""
  if not isinstance(body, dict):
    raise RequestError("body", f"the body is a JSON {type(body).__name__}; expected an object "
                       f"with fields {list(FIELDS)}")
  unknown = sorted(set(body) - set(FIELDS))
  if unknown:
    raise RequestError(unknown[0], f"unknown field {unknown[0]!r}; expected fields "
                       f"{list(FIELDS)}")
  if "labels" not in body:
    raise RequestError("labels", "labels is required: a list of class indices, one per image")
  labels = body["labels"]
  if not isinstance(labels, list) or not labels:
    raise RequestError("labels", f"labels={labels!r}; expected a non-empty list of integers")
  if len(labels) > limits.max_images:
    raise RequestError("labels", f"labels asks for {len(labels)} images; at most "
                       f"{limits.max_images} per request")
  for i, c in enumerate(labels):
    if not _is_int(c):
      raise RequestError("labels", f"labels[{i}]={c!r} ({type(c).__name__}); expected an "
                         "integer class")
    if not 0 <= c < limits.num_classes:
      raise RequestError("labels", f"labels[{i}]={c}: unknown class; expected an integer in "
                         f"[0, {limits.num_classes})")
  d = limits.defaults
  temperature = _number(body, "temperature", d["temperature"])
  if temperature < 0:
    raise RequestError("temperature", f"temperature={temperature}; expected >= 0")
  top_k = _int(body, "top_k", d["top_k"], 0)
  top_p = _number(body, "top_p", d["top_p"])
  if not 0.0 < top_p <= 1.0:
    raise RequestError("top_p", f"top_p={top_p}; expected a value in (0, 1]")
  cfg_scale = _number(body, "cfg_scale", d["cfg_scale"])
  if cfg_scale < 0:
    raise RequestError("cfg_scale", f"cfg_scale={cfg_scale}; expected >= 0")
  if cfg_scale != 1.0 and not limits.guidance:
    raise RequestError("cfg_scale", f"cfg_scale={cfg_scale}: this model was trained without "
                       "class dropout (no null class), so only cfg_scale=1 is served")
  seed = _int(body, "seed", 0, 0, MAX_SEED)
  fmt = body.get("format", "png")
  if fmt not in FORMATS:
    raise RequestError("format", f"format={fmt!r}; expected one of {list(FORMATS)}")
  return GenerateRequest(labels=[int(c) for c in labels], seed=seed, temperature=temperature,
                         top_k=top_k, top_p=top_p, cfg_scale=cfg_scale, format=fmt)
