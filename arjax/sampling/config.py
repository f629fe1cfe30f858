"""Sampling options: the sampler's name and the options every head's `sample` may take.

The options live in the experiment config as `config.eval.{cfg_scale, temperature, top_k,
top_p}` (with the guidance schedule `eval.cfg_schedule / cfg_power / cfg_by` where a config sets
them); the sampler's name is `config.sampling.name` ('auto': the model's `default_sampler()`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict


@dataclasses.dataclass(frozen=True)
class SamplingFields:
  """`config.sampling`: the node holds the sampler's `name` only ('auto' or a registered
  sampler; the options are config.eval's), so any other field there is refused at start."""


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  cfg_scale: float = 1.0   # classifier-free guidance scale (1: none).
  temperature: float = 1.0  # the head's temperature (0: greedy / the mode).
  top_k: int = 0           # categorical heads: top-k filtering (0: off).
  top_p: float = 1.0       # categorical heads: nucleus filtering (1: off).
  name: str = "auto"       # sampler registry name; auto: the model's default sampler.

  def validate(self):
    for field in ("cfg_scale", "temperature", "top_p"):
      if not math.isfinite(getattr(self, field)):  # NaN compares False with every bound.
        raise ValueError(f"{field}={getattr(self, field)}; expected a finite number")
    if self.cfg_scale < 0:
      raise ValueError(f"cfg_scale={self.cfg_scale}; expected >= 0 (1: no guidance)")
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature}; expected >= 0")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k}; expected >= 0")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p={self.top_p}; expected a value in (0, 1]")

  def head_options(self) -> Dict[str, Any]:
    """The head-specific options set away from their defaults (categorical: top_k, top_p)."""
    out = {}
    if self.top_k != 0:
      out["top_k"] = self.top_k
    if self.top_p != 1.0:
      out["top_p"] = self.top_p
    return out


def sampling_from_config(config, **overrides) -> SamplingConfig:
  """SamplingConfig from config.eval (options) and config.sampling.name, with overrides."""
  e = config.eval
  get = lambda k, d: overrides[k] if overrides.get(k) is not None else e.get(k, d)
  name = overrides.get("name") or config.get("sampling", {}).get("name", "auto")
  return SamplingConfig(cfg_scale=float(get("cfg_scale", 1.0)),
                        temperature=float(get("temperature", 1.0)),
                        top_k=int(get("top_k", 0)), top_p=float(get("top_p", 1.0)), name=name)
